"""The ``longvila`` command: one sub-command group per part of the project.

Each group lives beside the code it drives (``longvila.<part>.cli`` with a ``main(argv)`` function), and is
imported only when used, so ``longvila --help`` stays fast and a missing optional extra only affects its
own group.
"""

from __future__ import annotations

import importlib
import sys

# group name -> (module, one-line help)
GROUPS: dict[str, tuple[str, str]] = {
    "data": ("longvila.data.cli", "build, ingest, inspect and benchmark the webdataset shards"),
    "model": ("longvila.model.cli", "tokenizer and model utilities (build-tokenizer, info)"),
    "parallel": ("longvila.parallel.cli", "MM-SP layout planner and benchmarks"),
    "train": ("longvila.pipelines.cli", "the five-stage recipe (train all | --stage N)"),
    "eval": ("longvila.eval.cli", "needle in a haystack, VideoMME frame scaling"),
    "leaderboards": ("longvila.leaderboards.cli", "build the leaderboard tables and page"),
}


def _usage() -> str:
    lines = ["usage: longvila <group> [args...]", "", "groups:"]
    lines += [f"  {name:<13} {help_}" for name, (_, help_) in GROUPS.items()]
    lines += ["", "Run `longvila <group> --help` for a group's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from longvila import __version__

        print(__version__)
        return 0
    group = argv[0]
    if group not in GROUPS:
        print(f"longvila: unknown group {group!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(GROUPS[group][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
