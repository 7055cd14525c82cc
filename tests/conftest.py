"""Shared test settings: quiet progress bars, offline Hugging Face, a small thread count, fixed seeds."""

import os
import sys
from pathlib import Path

# Test modules are imported by path (--import-mode=importlib, so equal basenames in different parts do not
# clash); the parts' helper modules (e.g. parallel/sp_workers.py) are imported by name, also in spawned ranks.
for _part in sorted(p for p in Path(__file__).parent.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
    if str(_part) not in sys.path:
        sys.path.insert(0, str(_part))

os.environ.setdefault("LONGVILA_QUIET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
