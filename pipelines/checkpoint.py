"""Atomic, verified checkpoints: per-stage Hugging Face folders and resumable training state.

Layout under ``--out``::

    stage3/                 finished stage: save_pretrained model (safetensors) + processor, summary.json,
                            metrics.jsonl, loss.png, ds_config.json, COMPLETE (manifest)
    stage3.run/             the stage while it trains: metrics.jsonl, tensorboard/, ckpt/step-000050/ ...
    stage3.run/ckpt/step-000050/
        model/              save_pretrained (safetensors)
        state/trainer.json  step, data position, scheduler state, loss history, config
        state/rank00000.pt  that rank's optimizer partition and torch RNG state (tensors and plain values
                            only, loaded with ``torch.load(weights_only=True)``)
        COMPLETE            manifest: sha256 of every file, step, world size, config

Design choices:
- Everything is written into a hidden temporary folder beside the target, then the folder is renamed
  (``os.replace`` of a directory is atomic on POSIX); the ``COMPLETE`` manifest is written last inside
  the temporary folder. A folder without a valid manifest, or whose files do not match their sha256, is
  refused with a message naming it, never loaded.
- A checkpoint also records the training config; resuming with a different config is refused (a stale
  checkpoint), naming the differing fields.
- DeepSpeed's own checkpoint files are pickles; instead each rank's ZeRO optimizer ``state_dict`` is
  stripped to tensors and plain values (objects such as the loss scaler are restored from the live
  optimizer on load), so nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from longvila.utils import atomic_write_json, read_json, sha256_file

MANIFEST = "COMPLETE"
_FRESH = "__from_live_optimizer__"


class CheckpointError(RuntimeError):
    """A missing, partial, corrupt or stale checkpoint."""


def write_manifest(folder: Path, extra: dict[str, Any]) -> None:
    """Write ``COMPLETE`` listing the sha256 of every file under ``folder`` (call last)."""
    files = {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }
    atomic_write_json(folder / MANIFEST, {"files": files, **extra})


def verify(folder: str | os.PathLike, deep: bool = True) -> dict[str, Any]:
    """Return the manifest of a complete checkpoint folder; raise CheckpointError otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: checkpoint folder does not exist")
    if not (folder / MANIFEST).is_file():
        raise CheckpointError(f"{folder}: partial checkpoint (no {MANIFEST} manifest); it was not finished")
    try:
        manifest = read_json(folder / MANIFEST)
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    for rel, digest in manifest.get("files", {}).items():
        p = folder / rel
        if not p.is_file():
            raise CheckpointError(f"{folder}: file {rel} listed in {MANIFEST} is missing")
        if deep and sha256_file(p) != digest:
            raise CheckpointError(f"{folder}: file {rel} does not match its sha256 in {MANIFEST} (corrupt)")
    return manifest


def publish(tmp: Path, final: Path) -> None:
    """Rename a finished temporary folder onto ``final`` (replacing an older one)."""
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


def config_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, f"{prefix}{k}.")
        elif json.dumps(va, sort_keys=True) != json.dumps(vb, sort_keys=True):
            out.append(f"{prefix}{k}")
    return out


# ---------------------------------------------------------------- optimizer state without pickles
def _strip(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if obj is None or type(obj) in (bool, int, float, str):  # NOTE: exact types; enums come from the live one
        return obj
    if type(obj) is dict:
        return {k: _strip(v) for k, v in obj.items()}
    if type(obj) in (list, tuple):
        return type(obj)(_strip(v) for v in obj)
    return _FRESH


def _merge(saved: Any, live: Any) -> Any:
    if isinstance(saved, str) and saved == _FRESH:
        return live
    if isinstance(saved, dict) and isinstance(live, dict):
        return {k: _merge(v, live.get(k)) for k, v in saved.items()}
    if isinstance(saved, list | tuple) and isinstance(live, list | tuple) and len(saved) == len(live):
        return type(saved)(_merge(s, v) for s, v in zip(saved, live, strict=True))
    return saved


def save_rank_state(path: Path, optimizer: Any) -> None:
    """This rank's optimizer partition + torch RNG, tensors and plain values only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"optimizer": _strip(optimizer.state_dict()), "rng": torch.get_rng_state()}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_rank_states(state_dir: Path, world_size: int) -> list[dict]:
    """All ranks' saved states (ZeRO's loader wants every partition), loaded with weights_only=True."""
    out = []
    for r in range(world_size):
        p = state_dir / f"rank{r:05d}.pt"
        if not p.is_file():
            raise CheckpointError(f"{p}: missing optimizer state of rank {r}")
        out.append(torch.load(p, map_location="cpu", weights_only=True))
    return out


def restore_optimizer(optimizer: Any, states: list[dict]) -> None:
    """Load saved optimizer partitions into a live (DeepSpeed ZeRO or torch) optimizer."""
    live = optimizer.state_dict()
    merged = [_merge(s["optimizer"], live) for s in states]
    if "single_partition_of_fp32_groups" in live or "base_optimizer_state" in live:  # ZeRO 1/2
        optimizer.load_state_dict(merged, load_optimizer_states=True, load_from_fp32_weights=True)
    else:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        optimizer.load_state_dict(merged[rank])


def latest_step_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete ``step-*`` folder under ``ckpt_root`` (partial ones are skipped)."""
    if not ckpt_root.is_dir():
        return None
    for p in sorted(ckpt_root.glob("step-*"), reverse=True):
        if (p / MANIFEST).is_file():
            return p
    return None


def prune(ckpt_root: Path, keep: int) -> None:
    steps = sorted(p for p in ckpt_root.glob("step-*") if (p / MANIFEST).is_file())
    for p in steps[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)
