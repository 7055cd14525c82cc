"""The README's file tree names every tracked file (one line each), and its two commands exist."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def tree_entries() -> list[str]:
    block = re.search(r"<!-- files:start -->\n```text\n(.*?)```\n<!-- files:end -->", README, re.S)
    assert block, "README.md has no file tree between <!-- files:start --> and <!-- files:end -->"
    entries = []
    for line in block.group(1).splitlines():
        if line.strip():
            path, sep, what = line.partition(" - ")
            assert sep and what.strip(), f"tree line without a description: {line!r}"
            entries.append(path.strip())
    return entries


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in out.stdout.splitlines() if (ROOT / f).exists()]


def test_every_tracked_file_is_in_the_tree_and_every_entry_exists():
    entries = tree_entries()
    for entry in entries:
        assert (ROOT / entry).exists(), f"README tree names {entry}, which does not exist"
    dirs = [e for e in entries if e.endswith("/")]
    missing = [f for f in tracked_files() if f not in entries and not any(f.startswith(d) for d in dirs)]
    assert not missing, f"README tree lacks {len(missing)} tracked file(s): {missing}"
    assert len(entries) == len(set(entries)), "README tree lists a path twice"


def test_quick_start_commands_are_make_targets():
    quick = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^make (\S+)", quick, re.M)
    assert commands == ["all", "test"]
    makefile = (ROOT / "Makefile").read_text()
    for target in commands:
        assert re.search(rf"^{target}:", makefile, re.M), f"Makefile has no target {target}"
