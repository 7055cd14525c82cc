"""``longvila data``: build the sets, ingest a user's videos, make a long-video set from them (and merge its
rank parts), verify shards, preview, benchmark."""

from __future__ import annotations

import argparse
import os
import sys
import time


def _build(args) -> int:
    from longvila.data import sets
    from longvila.utils import set_field

    cfg = sets.BuildConfig(seed=args.seed)
    for name in args.sets:
        if name not in sets.SET_NUMBER:
            print(f"longvila data build: unknown set {name!r}; known: {', '.join(sets.SET_NUMBER)}", file=sys.stderr)
            return 2
    for kv in args.set or []:
        path, _, value = kv.partition("=")
        try:
            set_field(cfg, path, value)
        except (AttributeError, ValueError) as e:
            print(f"longvila data build: bad --set {kv!r}: {e}", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    manifests = sets.build(cfg, args.out, sets=args.sets, workers=args.workers)
    for name, m in manifests.items():
        skipped = ", ".join(f"{r}: {n}" for r, n in m["skipped"].items()) or "none"
        print(f"{name}: {m['num_samples']} samples in {m['num_shards']} shards -> {os.path.join(args.out, name)} "
              f"(skipped {sum(m['skipped'].values())}: {skipped})")
    print(f"built in {time.perf_counter() - t0:.1f} s")
    return 0


def _verify(args) -> int:
    from pathlib import Path

    from longvila.data.shards import MANIFEST, ShardError, verify_set

    root = Path(args.dir)
    dirs = [root] if (root / MANIFEST).is_file() else sorted(p.parent for p in root.glob(f"*/{MANIFEST}"))
    if not dirs:
        print(f"longvila data verify: no {MANIFEST} in {root} or its sub-folders", file=sys.stderr)
        return 1
    bad = 0
    for d in dirs:
        try:
            m = verify_set(d)
            print(f"ok  {d}: {m['num_samples']} samples, {len(m['shards'])} shards")
        except (ShardError, ValueError, FileNotFoundError) as e:
            bad += 1
            print(f"BAD {e}", file=sys.stderr)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    from longvila.data.sets import SET_NUMBER

    ap = argparse.ArgumentParser(prog="longvila data", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build the synthetic-world sets as webdataset shards (resumable)")
    b.add_argument("--out", required=True)
    b.add_argument("--sets", nargs="+", default=list(SET_NUMBER), metavar="SET", help=f"of {list(SET_NUMBER)}")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    b.add_argument("--set", action="append", metavar="FIELD=VALUE",
                   help="override a config field, e.g. long_sft.max_frames=600 or short_sft.num_samples=100")
    v = sub.add_parser("verify", help="check every shard's sha256 against its manifest")
    v.add_argument("dir")
    from longvila.data import bench, ingest, longvideo, preview

    ingest.add_parser(sub)
    longvideo.add_parsers(sub)
    bench.add_parser(sub)
    preview.add_parser(sub)
    args = ap.parse_args(argv)
    run = {"build": _build, "verify": _verify, "ingest": ingest.run_cli, "bench": bench.run_cli,
           "preview": preview.run_cli, "longvideo": longvideo.run_cli, "merge": longvideo.run_merge}
    return run[args.cmd](args)
