"""Webdataset shards with a verified manifest: deterministic, atomic, resumable by shard.

A set is a folder: ``shard-000000.tar ...`` and ``manifest.json`` (sample count, sha256 and size of every
shard, per-sample checksums, build configuration and seed). Samples are dicts of extensions
(``{"__key__", "json", "mp4"}``, ``{"__key__", "json", "jpg"}``, ``{"__key__", "json"}``; several stills as
``"0.jpg", "1.jpg", ...``), written with ``webdataset.TarWriter``.

Design choices:
- Shard k holds samples ``[k * per_shard, (k + 1) * per_shard)`` and every sample is a pure function of
  (set, seed, index). Shards are therefore independent: a process pool builds them in any order, and a
  killed build resumes shard by shard.
- Each shard is written to a temporary file and renamed (``longvila.utils.atomic_open``); then a small
  record (sha256, per-sample checksums, skips) goes to ``.build/shard-k.json``. On restart a shard is kept
  only if its record exists, was made with the same configuration, and its sha256 still matches; anything
  else is rebuilt. The manifest is written last, from the records.
- Byte-identical shards for the same seed: fixed tar mtime/owner, deterministic JSON (sorted keys) and
  bit-exact mp4 (``video_io.encode_mp4``). The manifest states it (``determinism``) and carries per-sample
  checksums (sha256 over the sorted extensions and their bytes) as a second line of proof.
- Size bound: shards are bounded by sample count (chosen per set from the sample size) and by
  ``max_shard_bytes``; a shard over the byte bound fails the build with a message naming it.
- Reading verifies: a shard whose sha256 differs from the manifest raises ``ShardError`` naming it.
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import io
import json
import multiprocessing as mp
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from longvila.utils import atomic_open, atomic_write_json, progress, read_json, sha256_file

MANIFEST = "manifest.json"
BUILD_DIR = ".build"
FORMAT_VERSION = 1


class ShardError(RuntimeError):
    """A shard or manifest that fails verification; the message names the file."""


def shard_name(k: int) -> str:
    return f"shard-{k:06d}.tar"


def encode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """Turn a sample's values into bytes: ``json`` dicts -> sorted-key UTF-8 JSON, str -> UTF-8."""
    out: dict[str, Any] = {}
    for k, v in sample.items():
        if k == "__key__":
            if not isinstance(v, str) or not v or "." in v or "/" in v:
                raise ValueError(f"__key__ must be a non-empty string without '.' or '/', not {v!r}")
            out[k] = v
        elif k.endswith("json") and not isinstance(v, bytes | bytearray):
            out[k] = json.dumps(v, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        elif isinstance(v, str):
            out[k] = v.encode("utf-8")
        elif isinstance(v, bytes | bytearray | memoryview):
            out[k] = bytes(v)
        else:
            raise TypeError(f"sample {sample.get('__key__')!r}: extension {k!r} holds {type(v).__name__}, not bytes")
    if "__key__" not in out:
        raise ValueError("sample has no __key__")
    return out


def sample_checksum(sample: dict[str, Any]) -> str:
    """sha256 over a sample's extensions (sorted) and their bytes."""
    h = hashlib.sha256()
    for k in sorted(sample):
        if k.startswith("__"):
            continue
        h.update(k.encode() + b"\0" + len(sample[k]).to_bytes(8, "little"))
        h.update(sample[k])
    return h.hexdigest()


def write_shard(path: str | os.PathLike, samples: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Write samples to a tar atomically; returns its record (name, sha256, bytes, per-sample checksums)."""
    import webdataset as wds

    path = Path(path)
    sums: dict[str, str] = {}
    buf = io.BytesIO()
    with wds.TarWriter(buf, user="longvila", group="longvila", mode=0o444, encoder=False, mtime=0.0) as tw:
        for s in samples:
            enc = encode_sample(s)
            if enc["__key__"] in sums:
                raise ValueError(f"{path.name}: duplicate sample key {enc['__key__']!r}")
            sums[enc["__key__"]] = sample_checksum(enc)
            tw.write(enc)
    data = buf.getvalue()
    with atomic_open(path, "wb") as f:
        f.write(data)
    return {"name": path.name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "num_samples": len(sums), "samples": sums}


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


# A shard maker: (shard index) -> (samples, skipped reasons -> count). Module-level and picklable.
ShardMaker = Callable[[int], tuple[list[dict[str, Any]], dict[str, int]]]


def _build_one(out_dir: str, k: int, make: ShardMaker, chash: str, max_bytes: int) -> dict[str, Any]:
    samples, skipped = make(k)
    rec = write_shard(Path(out_dir) / shard_name(k), samples)
    if rec["bytes"] > max_bytes:
        raise ShardError(f"{Path(out_dir) / shard_name(k)}: {rec['bytes']} bytes, over the bound of {max_bytes}; "
                         "lower the samples per shard")
    rec["skipped"] = dict(sorted(skipped.items()))
    rec["config_hash"] = chash
    atomic_write_json(Path(out_dir) / BUILD_DIR / f"{shard_name(k)}.json", rec, indent=None)
    return rec


def _kept_record(out_dir: Path, k: int, chash: str) -> dict[str, Any] | None:
    """The record of an already built shard if it is complete, current and intact; else None."""
    tar, rec_path = out_dir / shard_name(k), out_dir / BUILD_DIR / f"{shard_name(k)}.json"
    if not tar.is_file() or not rec_path.is_file():
        return None
    try:
        rec = read_json(rec_path)
    except ValueError:
        return None
    if rec.get("config_hash") != chash or rec.get("sha256") != sha256_file(tar):
        return None
    return rec


def build_set(out_dir: str | os.PathLike, name: str, num_shards: int, make: ShardMaker,
              config: dict[str, Any], seed: int, workers: int = 1,
              max_shard_bytes: int = 256 << 20) -> dict[str, Any]:
    """Build (or resume) a set of ``num_shards`` shards in ``out_dir``; returns the manifest written.

    ``make(k)`` returns shard k's samples and its skip counts. Completed, verified shards are kept.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chash = config_hash({"config": config, "seed": seed, "num_shards": num_shards, "format": FORMAT_VERSION})
    records: dict[int, dict[str, Any]] = {}
    todo = []
    for k in range(num_shards):
        rec = _kept_record(out, k, chash)
        if rec is None:
            todo.append(k)
        else:
            records[k] = rec
    for stale in sorted(out.glob("shard-*.tar")):  # shards of an earlier, larger build
        if int(stale.stem.split("-")[1]) >= num_shards:
            stale.unlink()
            (out / BUILD_DIR / f"{stale.name}.json").unlink(missing_ok=True)
    if todo:
        (out / MANIFEST).unlink(missing_ok=True)  # a manifest is only ever present for a complete set
    bar = progress(todo, desc=f"{name} shards", total=len(todo), unit="shard")  # a tqdm: rate and ETA
    if workers <= 1 or len(todo) <= 1:
        for k in bar:
            records[k] = _build_one(str(out), k, make, chash, max_shard_bytes)
    else:
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as ex:
            futs = {ex.submit(_build_one, str(out), k, make, chash, max_shard_bytes): k for k in todo}
            for fut in cf.as_completed(futs):
                records[futs[fut]] = fut.result()
                bar.update(1)
        bar.close()
    skipped: dict[str, int] = {}
    for rec in records.values():
        for reason, n in rec.get("skipped", {}).items():
            skipped[reason] = skipped.get(reason, 0) + n
    manifest = {
        "set": name,
        "format": FORMAT_VERSION,
        "num_samples": sum(r["num_samples"] for r in records.values()),
        "num_shards": num_shards,
        "shards": [{k2: records[k][k2] for k2 in ("name", "sha256", "bytes", "num_samples")} for k in range(num_shards)],
        "samples": {key: s for k in range(num_shards) for key, s in records[k]["samples"].items()},
        "skipped": dict(sorted(skipped.items())),
        "config": config,
        "seed": seed,
        "determinism": "byte-identical shards for the same config and seed (sha256 per shard and per sample)",
    }
    manifest = json.loads(json.dumps(manifest))  # the same value a reader gets (tuples become lists)
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def load_manifest(set_dir: str | os.PathLike) -> dict[str, Any]:
    """Read and sanity-check a set's manifest (missing or malformed -> error naming the file)."""
    path = Path(set_dir) / MANIFEST
    m = read_json(path)
    for key in ("set", "num_samples", "shards", "samples", "config", "seed"):
        if key not in m:
            raise ShardError(f"{path}: missing field {key!r}")
    if sum(s["num_samples"] for s in m["shards"]) != m["num_samples"]:
        raise ShardError(f"{path}: shard sample counts do not add up to num_samples {m['num_samples']}")
    return m


def verify_set(set_dir: str | os.PathLike) -> dict[str, Any]:
    """Check every shard's sha256 against the manifest; returns the manifest or raises ShardError."""
    m = load_manifest(set_dir)
    for s in m["shards"]:
        p = Path(set_dir) / s["name"]
        if not p.is_file():
            raise ShardError(f"{p}: shard listed in the manifest is missing")
        got = sha256_file(p)
        if got != s["sha256"]:
            raise ShardError(f"{p}: sha256 {got[:12]}... does not match the manifest ({s['sha256'][:12]}...); "
                             "the shard is corrupt or stale: rebuild the set")
    return m


def shard_paths(set_dir: str | os.PathLike, verify: bool = True) -> list[str]:
    """The shard files of a set in order (verified against the manifest by default)."""
    m = verify_set(set_dir) if verify else load_manifest(set_dir)
    return [str(Path(set_dir) / s["name"]) for s in m["shards"]]


def iter_shard(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Samples of one tar as dicts of extensions (bytes; ``json`` parsed)."""
    import tarfile

    cur: dict[str, Any] = {}
    with tarfile.open(path, "r") as tf:
        for member in tf:
            if not member.isfile():
                continue
            key, ext = member.name.split(".", 1)
            if cur and cur["__key__"] != key:
                yield cur
                cur = {}
            cur["__key__"] = key
            data = tf.extractfile(member).read()
            cur[ext] = json.loads(data) if ext == "json" else data
    if cur:
        yield cur


def iter_samples(set_dir: str | os.PathLike, verify: bool = True) -> Iterator[dict[str, Any]]:
    """All samples of a set in order (shards verified first by default)."""
    for p in shard_paths(set_dir, verify=verify):
        yield from iter_shard(p)
