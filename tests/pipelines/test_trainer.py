"""The stage trainer on a tiny Qwen2: resume after a kill, stale and partial checkpoints refused, logs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from longvila.pipelines import checkpoint as ck

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
SCRIPT = str(HERE / "tiny_task.py")


def run(out, steps, stage=1, *over, nproc=1, env=None, check=True):
    e = {**os.environ, "OMP_NUM_THREADS": "1", "LONGVILA_QUIET": "1",
         "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(ROOT / ".torch_extensions")),
         **(env or {})}
    if nproc == 1:
        cmd = [sys.executable, SCRIPT]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", SCRIPT]
    p = subprocess.run(cmd + [str(out), str(steps), str(stage), *over], env=e, capture_output=True, text=True,
                       timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stderr[-4000:]}")
    return p


def losses(folder):
    return [json.loads(line)["loss"] for line in (Path(folder) / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.dist
def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    run(tmp_path / "a", 6, nproc=2)
    p = run(tmp_path / "b", 6, nproc=2, env={"LONGVILA_KILL_AFTER_STEP": "5"}, check=False)
    assert p.returncode != 0
    assert not (tmp_path / "b" / "stage1").exists()  # nothing published by the killed run
    assert (tmp_path / "b" / "stage1.run" / "ckpt" / "step-000004" / "COMPLETE").is_file()
    # resuming with another config is refused (a stale checkpoint), naming the field
    p = run(tmp_path / "b", 6, 1, "optim.lr=1e-2", nproc=2, check=False)
    assert p.returncode != 0 and "stale checkpoint" in p.stderr and "optim.lr" in p.stderr
    run(tmp_path / "b", 6, nproc=2)  # resumes from step 4
    a, b = losses(tmp_path / "a" / "stage1"), losses(tmp_path / "b" / "stage1")
    assert len(a) == len(b) == 6
    assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
    assert a[-1] < a[0]
    wa = load_file(tmp_path / "a" / "stage1" / "model.safetensors")
    wb = load_file(tmp_path / "b" / "stage1" / "model.safetensors")
    for k in wa:
        assert (wa[k] - wb[k]).abs().max() < 1e-6, k
    summary = json.loads((tmp_path / "b" / "stage1" / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["world_size"] == 2 and summary["tokens"] == 6 * 2 * 4 * 16
    assert (tmp_path / "b" / "stage1" / "loss.png").stat().st_size > 1000
    assert not (tmp_path / "b" / "stage1.run").exists()


def test_verify_refuses_partial_and_corrupt(tmp_path):
    d = tmp_path / "ck"
    d.mkdir()
    (d / "a.bin").write_bytes(b"123")
    with pytest.raises(ck.CheckpointError, match="partial checkpoint"):
        ck.verify(d)
    ck.write_manifest(d, {"step": 1})
    assert ck.verify(d)["step"] == 1
    (d / "a.bin").write_bytes(b"124")
    with pytest.raises(ck.CheckpointError, match="a.bin does not match its sha256"):
        ck.verify(d)
    (d / "a.bin").unlink()
    with pytest.raises(ck.CheckpointError, match="a.bin listed in COMPLETE is missing"):
        ck.verify(d)
    with pytest.raises(ck.CheckpointError, match="does not exist"):
        ck.verify(tmp_path / "nope")


def test_optimizer_state_round_trip_without_pickles(tmp_path):
    import torch

    p = torch.nn.Parameter(torch.randn(4))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones(4)
    opt.step()
    ck.save_rank_state(tmp_path / "rank00000.pt", opt)
    q = torch.nn.Parameter(p.detach().clone())
    opt2 = torch.optim.AdamW([q], lr=0.1)
    ck.restore_optimizer(opt2, ck.load_rank_states(tmp_path, 1))
    for o in (opt, opt2):
        o.param_groups[0]["params"][0].grad = torch.ones(4)
        o.step()
    torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert ck.config_diff({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}}) == ["a.c"]
