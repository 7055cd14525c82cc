"""``longvila data build`` / ``verify`` from the command line: typed overrides, verification exit codes."""

import subprocess
import sys

from longvila.data import shards


def _run(*args):
    return subprocess.run([sys.executable, "-m", "longvila.cli", "data", *args], capture_output=True, text=True,
                          timeout=300)


def test_build_verify_and_refuse_corrupt(tmp_path):
    r = _run("build", "--out", str(tmp_path), "--sets", "short_sft_eval", "--workers", "1",
             "--set", "short_sft_eval.num_samples=3", "--set", "short_sft_eval.per_shard=2",
             "--set", "short_sft_eval.frames=8,9")
    assert r.returncode == 0, r.stderr
    assert "short_sft_eval: 3 samples in 2 shards" in r.stdout and "skipped 0" in r.stdout
    m = shards.load_manifest(tmp_path / "short_sft_eval")
    assert m["config"]["set"]["frames"] == [8, 9] and m["num_samples"] == 3
    assert all(8 <= s["json"]["media"][0]["num_frames"] <= 9 for s in shards.iter_samples(tmp_path / "short_sft_eval"))
    assert _run("verify", str(tmp_path)).returncode == 0
    p = tmp_path / "short_sft_eval" / "shard-000001.tar"
    p.write_bytes(p.read_bytes()[:-1] + b"!")
    r = _run("verify", str(tmp_path))
    assert r.returncode == 1 and "shard-000001.tar" in r.stderr and "Traceback" not in r.stderr


def test_bad_arguments_are_clear(tmp_path):
    r = _run("build", "--out", str(tmp_path), "--sets", "bogus")
    assert r.returncode == 2 and "unknown set 'bogus'" in r.stderr
    r = _run("build", "--out", str(tmp_path), "--sets", "align", "--set", "align.num_sample=3")
    assert r.returncode == 2 and "no field 'num_sample'" in r.stderr
    r = _run("verify", str(tmp_path / "none"))
    assert r.returncode == 1 and "no manifest.json" in r.stderr
