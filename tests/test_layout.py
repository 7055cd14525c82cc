"""The install layout: one `longvila` namespace over the paper's top-level folders, and the CLI."""

import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PARTS = ["data", "model", "parallel", "pipelines", "eval", "leaderboards"]


@pytest.mark.parametrize("part", PARTS)
def test_part_imports_from_its_top_level_folder(part):
    mod = importlib.import_module(f"longvila.{part}")
    assert Path(mod.__file__).resolve().parent == ROOT / part


def test_no_generic_top_level_module_is_installed(tmp_path):
    # A fresh interpreter outside the repository sees only what the install put on its path.
    code = f"import importlib.util as u; print([n for n in {PARTS!r} if u.find_spec(n)])"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    ok = subprocess.run([sys.executable, "-c", "import longvila.data, longvila.model"], cwd=tmp_path)
    assert ok.returncode == 0


def test_cli_lists_groups_and_rejects_unknown():
    out = subprocess.run([sys.executable, "-m", "longvila", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for group in ["data", "model", "parallel", "train", "eval", "leaderboards"]:
        assert f"  {group} " in out.stdout
    bad = subprocess.run([sys.executable, "-m", "longvila", "nosuch"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown group 'nosuch'" in bad.stderr


def test_atomic_write_leaves_old_file_on_error(tmp_path):
    from longvila.utils import atomic_open, atomic_write_json, read_json

    target = tmp_path / "state.json"
    atomic_write_json(target, {"step": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as f:
            f.write('{"step": 2')
            raise RuntimeError("killed mid-write")
    assert read_json(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left behind
    mask = os.umask(0o022)
    try:  # the usual permissions, not a temporary file's owner-only 0600
        atomic_write_json(target, {"step": 3})
        assert target.stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(tmp_path / "bad.json")


def test_typed_overrides_parse_by_annotation():
    """One typed parser behind `longvila data build --set` and `longvila train --set`."""
    from dataclasses import dataclass, field

    from longvila.utils import parse_typed, set_field

    assert parse_typed("1e4", int, "k") == 10000 and parse_typed("0.5", float, "k") == 0.5
    assert parse_typed("off", bool, "k") is False and parse_typed("none", str | None, "k") is None
    assert parse_typed("8, 32", tuple[int, int], "k") == (8, 32)
    assert parse_typed("a,b,c", tuple[str, ...], "k") == ("a", "b", "c")
    with pytest.raises(ValueError, match="k: expected 2 comma-separated values"):
        parse_typed("1,2,3", tuple[int, int], "k")
    with pytest.raises(ValueError, match="k: expected int"):
        parse_typed("x", int, "k")
    with pytest.raises(ValueError, match="k: expected a boolean"):
        parse_typed("maybe", bool, "k")

    @dataclass
    class Inner:
        frames: tuple[int, int] = (8, 32)
        captioner: str | None = None

    @dataclass
    class Outer:
        inner: Inner = field(default_factory=Inner)

    cfg = Outer()
    set_field(cfg, "inner.frames", "4,16")
    set_field(cfg, "inner.captioner", "pkg.mod:fn")
    assert cfg.inner == Inner((4, 16), "pkg.mod:fn")
    with pytest.raises(AttributeError, match="no field 'nope'"):
        set_field(cfg, "inner.nope", "1")
    with pytest.raises(AttributeError, match="no group 'missing'"):
        set_field(cfg, "missing.frames", "1")


def test_git_commit_dirty_ignores_run_outputs(tmp_path):
    """A run that rewrites published results does not mark the results after it as made by dirty code."""
    from longvila.utils import git_commit

    def git(*a):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *a], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "leaderboards" / "results").mkdir(parents=True)
    (tmp_path / "leaderboards" / "results" / "r.json").write_text("{}")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "-A")
    git("commit", "-q", "-m", "init")
    rev = git_commit(root=tmp_path)
    assert len(rev) >= 7 and "+dirty" not in rev
    (tmp_path / "leaderboards" / "results" / "r.json").write_text('{"a": 1}')
    assert git_commit(root=tmp_path) == rev
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(root=tmp_path) == rev + "+dirty"
    assert git_commit(root=tmp_path / "not-a-repo") == "unknown"
