"""Shards and manifests: determinism, verification on read, resume after a kill or a corrupt shard."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from longvila.data import sets, shards


def _cfg(seed=0, n=5, per=2):
    cfg = sets.BuildConfig(seed=seed)
    cfg.short_sft.num_samples, cfg.short_sft.per_shard = n, per
    return cfg


def _explain(d1, d2) -> str:
    """Which samples of two builds differ, and in which extension (the message of a failed comparison)."""
    a = {s["__key__"]: s for s in shards.iter_samples(d1, verify=False)}
    b = {s["__key__"]: s for s in shards.iter_samples(d2, verify=False)}
    return "; ".join(f"{k}.{ext}" for k in sorted(a) for ext in sorted(a[k]) if a[k][ext] != b.get(k, {}).get(ext))


def _shard_bytes(d):
    return {p.name: p.read_bytes() for p in sorted(Path(d).glob("shard-*.tar"))}


def test_same_seed_byte_identical_and_seed_matters(tmp_path):
    a = sets.build(_cfg(), tmp_path / "a", sets=["short_sft"], workers=1)["short_sft"]
    b = sets.build(_cfg(), tmp_path / "b", sets=["short_sft"], workers=2)["short_sft"]
    assert a == b, _explain(tmp_path / "a/short_sft", tmp_path / "b/short_sft")
    assert _shard_bytes(tmp_path / "a/short_sft") == _shard_bytes(tmp_path / "b/short_sft")
    assert a["num_samples"] == 5 and len(a["shards"]) == 3 and len(a["samples"]) == 5
    for s in a["shards"]:
        assert s["sha256"] == shards.sha256_file(tmp_path / "a/short_sft" / s["name"])
    c = sets.build(_cfg(seed=1), tmp_path / "c", sets=["short_sft"], workers=1)["short_sft"]
    assert set(c["samples"].values()).isdisjoint(a["samples"].values())
    # per-sample checksums agree with what is read back
    for smp in shards.iter_samples(tmp_path / "a/short_sft"):
        raw = shards.encode_sample(smp)
        assert shards.sample_checksum(raw) == a["samples"][smp["__key__"]]


def test_corrupt_shard_is_refused_naming_it(tmp_path):
    sets.build(_cfg(), tmp_path, sets=["short_sft"], workers=1)
    d = tmp_path / "short_sft"
    p = d / "shard-000001.tar"
    data = bytearray(p.read_bytes())
    data[700] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(shards.ShardError, match="shard-000001.tar.*sha256"):
        shards.verify_set(d)
    with pytest.raises(shards.ShardError, match="shard-000001.tar"):
        list(shards.iter_samples(d))
    p.unlink()
    with pytest.raises(shards.ShardError, match="shard-000001.tar.*missing"):
        shards.verify_set(d)
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        shards.verify_set(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad/manifest.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad/manifest.json"):
        shards.verify_set(tmp_path / "bad")


def test_rebuild_after_corrupt_or_deleted_shard_gives_same_manifest(tmp_path):
    ref = sets.build(_cfg(), tmp_path, sets=["short_sft"], workers=1)["short_sft"]
    d = tmp_path / "short_sft"
    last = d / "shard-000002.tar"
    last.write_bytes(last.read_bytes()[:100])  # truncated, as by a crash of an older writer
    (d / "shard-000000.tar").unlink()
    mtime_kept = (d / "shard-000001.tar").stat().st_mtime_ns
    again = sets.build(_cfg(), tmp_path, sets=["short_sft"], workers=1)["short_sft"]
    assert again == ref, sorted(k for k in ref["samples"] if again["samples"].get(k) != ref["samples"][k])
    assert (d / "shard-000001.tar").stat().st_mtime_ns == mtime_kept, "an intact shard was rebuilt"
    shards.verify_set(d)


def test_changed_config_rebuilds_and_drops_stale_shards(tmp_path):
    sets.build(_cfg(n=5), tmp_path, sets=["short_sft"], workers=1)
    m = sets.build(_cfg(n=3), tmp_path, sets=["short_sft"], workers=1)["short_sft"]
    assert m["num_samples"] == 3 and sorted(p.name for p in (tmp_path / "short_sft").glob("*.tar")) == \
        ["shard-000000.tar", "shard-000001.tar"]
    assert m == sets.build(_cfg(n=3), tmp_path / "fresh", sets=["short_sft"], workers=1)["short_sft"]


KILL_SCRIPT = """
import sys
from longvila.data import sets
cfg = sets.BuildConfig()
cfg.short_sft.num_samples, cfg.short_sft.per_shard = 40, 2
sets.build(cfg, sys.argv[1], sets=["short_sft"], workers=1)
"""


@pytest.mark.slow
def test_resume_after_kill(tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "LONGVILA_QUIET": "1"}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(out)], env=env)
    rec_dir = out / "short_sft" / shards.BUILD_DIR
    deadline = time.time() + 120
    while time.time() < deadline and len(list(rec_dir.glob("*.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    done = len(list(rec_dir.glob("*.json")))
    assert 3 <= done < 20, "the build was not interrupted mid-way"
    assert not (out / "short_sft" / "manifest.json").exists()
    cfg = sets.BuildConfig()
    cfg.short_sft.num_samples, cfg.short_sft.per_shard = 40, 2
    resumed = sets.build(cfg, out, sets=["short_sft"], workers=1)["short_sft"]
    fresh = sets.build(cfg, tmp_path / "fresh", sets=["short_sft"], workers=2)["short_sft"]
    assert resumed == fresh, _explain(out / "short_sft", tmp_path / "fresh/short_sft")
    assert json.loads((out / "short_sft/manifest.json").read_text()) == fresh


def test_bounds_and_bad_samples(tmp_path):
    with pytest.raises(shards.ShardError, match="shard-000000.tar.*over the bound"):
        shards.build_set(tmp_path, "x", 1, _big_shard, {}, 0, max_shard_bytes=1000)
    with pytest.raises(ValueError, match="__key__"):
        shards.encode_sample({"__key__": "a.b", "json": {}})
    with pytest.raises(TypeError, match="extension 'mp4'"):
        shards.encode_sample({"__key__": "a", "mp4": 3})
    with pytest.raises(ValueError, match="duplicate sample key"):
        shards.write_shard(tmp_path / "d.tar", [{"__key__": "a", "json": {}}, {"__key__": "a", "json": {}}])


def _big_shard(k):
    return [{"__key__": f"s{i}", "bin": b"x" * 4000} for i in range(3)], {}
