"""Golden outputs: the seeded tiny model on fixed inputs reproduces tests/model/golden_tiny.json (atol 1e-5)."""

import json

import pytest
import torch
from golden_model import GOLDEN, golden_outputs


def test_golden_tiny():
    want = json.loads(GOLDEN.read_text())
    got = golden_outputs()
    assert got.keys() == want.keys()
    for key in want:
        torch.testing.assert_close(torch.tensor(got[key]), torch.tensor(want[key]), rtol=0, atol=1e-5, msg=key)
    assert got["loss"] == pytest.approx(want["loss"], abs=1e-5)
