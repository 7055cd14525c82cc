"""Small utilities every part shares: atomic writes, checksums, progress bars, run metadata.

Design choices:
- Durable state is written to a temporary file in the destination folder, flushed and fsync'ed, then
  renamed over the target (``os.replace`` is atomic on POSIX), so a killed process never leaves a half
  file under the final name.
- Progress bars are tqdm (rate and ETA for free); they go to stderr and stay quiet when ``LONGVILA_QUIET``
  is set (tests).
- Run metadata (commit, machine, date) is gathered here once, so every result file carries the same
  fields.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

T = TypeVar("T")


def _umask() -> int:
    """The process umask, read without changing it where the kernel reports it (os.umask is process-wide,
    and another thread may be creating files)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on clean exit fsync it and rename it to ``path``.

    On an exception the temporary file is removed and ``path`` is left as it was. The file gets the usual
    permissions (0666 minus the umask), not the owner-only mode of a temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open supports modes 'w' and 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=False) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing or malformed file raises an error that names it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid UTF-8 JSON ({e})") from None


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """A tqdm bar (rate and ETA) on stderr; silent when LONGVILA_QUIET is set."""
    from tqdm.auto import tqdm

    disable = bool(os.environ.get("LONGVILA_QUIET"))
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True)


# Files the runs themselves write into the tree (published results and the pages made from them): a change
# there does not make the code that produced a result "dirty".
RUN_OUTPUTS = ("leaderboards/results", "leaderboards/assets", "leaderboards/README.md", "leaderboards/index.html")


def git_commit(short: bool = True, root: str | os.PathLike | None = None) -> str:
    """The commit of the working tree (with ``+dirty`` if it has uncommitted changes outside ``RUN_OUTPUTS``),
    or ``unknown``. ``root``: the repository (default: this project's)."""
    root = Path(root) if root is not None else Path(__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short" if short else "--verify", "HEAD"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
             *(f":(exclude){p}" for p in RUN_OUTPUTS)],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, Any]:
    """What a benchmark or result needs to say about the machine it ran on."""
    import torch

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    """Lay out a matplotlib figure, write it as PNG atomically to ``path``, close it; returns the path."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


# ------------------------------------------------------------------------------------------ typed overrides
def parse_typed(value: str, tp: Any, key: str, special: Callable[[str, Any, str], Any] | None = None) -> Any:
    """A command-line string parsed as the annotated type ``tp`` of config field ``key``.

    Handles ``X | None`` ("none"/"null"), ``tuple[T, ...]`` and fixed ``tuple[A, B]`` (comma-separated),
    ``bool`` (1/0, true/false, yes/no, on/off), ``int`` (also "1e4"), ``float`` and ``str``. ``special(value,
    tp, key)`` is tried first and returns ``NotImplemented`` for the types it leaves to this function.
    Raises ``ValueError`` naming ``key`` for a value that does not fit.
    """
    import types
    import typing

    if special is not None:
        got = special(value, tp, key)
        if got is not NotImplemented:
            return got
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value.lower() in ("none", "null") and len(args) < len(typing.get_args(tp)):
            return None
        return parse_typed(value, args[0], key, special)
    if origin is tuple:
        args = typing.get_args(tp)
        parts = [v.strip() for v in value.split(",") if v.strip()]
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return tuple(parse_typed(p, args[0] if args else str, key, special) for p in parts)
        if len(parts) != len(args):
            raise ValueError(f"{key}: expected {len(args)} comma-separated values, got {value!r}")
        return tuple(parse_typed(p, a, key, special) for p, a in zip(parts, args, strict=True))
    if tp is bool:
        if value.lower() in ("1", "true", "yes", "on"):
            return True
        if value.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"{key}: expected a boolean, got {value!r}")
    if tp in (int, float, str):
        try:
            return tp(float(value)) if tp is int and "e" in value.lower() else tp(value)
        except ValueError:
            raise ValueError(f"{key}: expected {tp.__name__}, got {value!r}") from None
    raise ValueError(f"{key}: cannot override a field of type {tp}")


def set_field(obj: Any, path: str, value: str) -> None:
    """``set_field(cfg, "long_sft.max_frames", "600")``: parse and set one field of nested (mutable)
    dataclasses by its annotated type; an unknown field is an AttributeError listing the known ones."""
    import dataclasses
    import typing

    *parents, leaf = path.split(".")
    for p in parents:
        if not dataclasses.is_dataclass(obj) or p not in {f.name for f in dataclasses.fields(obj)}:
            raise AttributeError(f"{type(obj).__name__} has no group {p!r}")
        obj = getattr(obj, p)
    hints = typing.get_type_hints(type(obj))
    if not dataclasses.is_dataclass(obj) or leaf not in hints or dataclasses.is_dataclass(hints[leaf]):
        known = sorted(f.name for f in dataclasses.fields(obj)) if dataclasses.is_dataclass(obj) else []
        raise AttributeError(f"{type(obj).__name__} has no field {leaf!r}; fields: {known}")
    setattr(obj, leaf, parse_typed(value, hints[leaf], path))
