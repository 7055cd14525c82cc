"""Hugging Face integration: sequence-parallel attention for any HF causal LM through the public
``AttentionInterface`` / ``AttentionMaskInterface`` registries (no patching of private functions).

``apply_sequence_parallel(model, mesh)`` registers the attention under ``ATTN_NAME`` and selects it with
``set_attn_implementation``. The attention function:
- with as many keys as queries (training, prefill), runs ``sp_attention`` on the local zigzag shard,
  deriving packed-sample boundaries from the ``position_ids`` the decoder layers pass through (positions
  must be *global* and restart at 0 at each packed sample; with more than one SP rank the caller must pass
  them, since HF's default ``arange(S_local)`` would be wrong for a shard);
- with fewer queries than keys (decoding against a gathered cache), runs local causal attention aligned
  to the end of the cache.
Log-n attention scaling (``logn_scale``) is on when the LLM's config carries ``logn_attention_base`` (a
positive number of positions): queries past that position get sharper logits, in training, prefill and
decoding alike. It lives in this attention only; the LLM folder loaded alone with another attention
implementation runs without it.
The mask function returns no mask (causality and packing are handled inside); a real padding mask is
refused with a clear error (pack samples instead).

A one-rank mesh is supported: plain causal attention that respects packed-sample boundaries, for the
single-process trainer.

The attention backend (``attn_backend``: auto, torch, flash_attn, ring_flash_attn; see ``backends.py``) is
chosen at ``apply_sequence_parallel`` and resolved per call from the tensors' device and dtype. The
host-side attention plan (``attention.SPPlan``) is made once per forward: the first layer makes it from the
``position_ids`` tensor HF passes to every layer, the others find it in a one-entry cache keyed by that
tensor (a weak reference, its version counter, the shapes and the mesh), so no layer after the first reads
a device value. Callers that hold the global positions on the host (the MM-SP step, SP prefill and scoring)
pass a plan made there instead (``attention.use_plan``), and no layer reads a device value at all. Every tensor made here (decode masks, positions) is made on the device of the query.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .attention import active_plan, logn_scale, plan_attention, segment_ids_from_positions, sp_attention
from .backends import check_choice
from .mesh import SPMesh

ATTN_NAME = "longvila_sp"
LOGN_KEY = "logn_attention_base"  # text-config attribute: log-n scaling base (positions); 0 or absent = off
_MESH_ATTR = "_longvila_sp_mesh"
_BACKEND_ATTR = "_longvila_sp_backend"
_PLAN_CACHE: dict = {}  # one entry: the plan of the forward in progress


def _decode_attention(q, k, v, scale):
    """q (B, H, Sq, D) against a longer cache k/v (B, Hkv, Sk, D), causal aligned to the end."""
    sq, sk = q.shape[2], k.shape[2]
    mask = None
    if sq > 1:
        mask = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(diagonal=sk - sq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def step_plan(query: torch.Tensor, pos: torch.Tensor | None, mesh: SPMesh):
    """The ``SPPlan`` of this forward: the caller's (``attention.use_plan``) when it fits the local shape, else
    made on the first layer's call and found again by the next layers (same ``position_ids`` tensor, same
    version, same shapes and mesh)."""
    given = active_plan()
    if given is not None and given.shape in ((query.shape[0], query.shape[2]), (-1, -1)):
        return given
    # NOTE: tensors made under torch.inference_mode have no version counter, so a plan for one of them is not
    # cached (made per layer: a host-side plan, cheap next to the layer)
    cacheable = pos is not None and not pos.is_inference()
    key = (id(mesh), tuple(query.shape), (tuple(pos.shape), pos._version) if cacheable else None)
    hit = _PLAN_CACHE.get("entry")
    if cacheable and hit is not None and hit[1] == key and hit[0]() is pos:
        return hit[2]
    seg = None if pos is None else segment_ids_from_positions(pos, mesh, query.shape[0])
    plan = plan_attention(seg, mesh, "zigzag", query)
    if cacheable:
        _PLAN_CACHE["entry"] = (weakref.ref(pos), key, plan)
    return plan


def sp_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                         is_causal=None, sliding_window=None, **kwargs):
    """The ``AttentionInterface`` function: query (B, H, S, D), key/value (B, Hkv, S_kv, D) ->
    (out (B, S, H, D), None)."""
    if dropout:
        raise ValueError(f"{ATTN_NAME}: attention dropout is not supported (got {dropout})")
    if sliding_window is not None:
        raise ValueError(f"{ATTN_NAME}: sliding-window attention is not supported")
    mesh = getattr(module, _MESH_ATTR, None) or SPMesh.single()
    backend = getattr(module, _BACKEND_ATTR, "auto")
    pos = kwargs.get("position_ids")
    base = getattr(getattr(module, "config", None), LOGN_KEY, 0) or 0
    if base:
        if pos is None:  # no packing: positions count from the start of the cache
            pos = torch.arange(key.shape[2] - query.shape[2], key.shape[2], device=query.device)[None]
            if mesh.sp_size > 1:
                raise ValueError(f"{ATTN_NAME}: log-n scaling on {mesh.sp_size} SP ranks needs the global "
                                 "position_ids of the shard")
        query = logn_scale(query, pos, int(base))
    if key.shape[2] == query.shape[2]:
        out = sp_attention(query, key, value, mesh, step_plan(query, pos, mesh), scaling, backend=backend)
    else:
        out = _decode_attention(query, key, value, scaling)
    return out.transpose(1, 2).contiguous(), None


def sp_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
            attention_mask=None, **kwargs):
    """The ``AttentionMaskInterface`` function: no mask (see the module docstring)."""
    if attention_mask is not None and attention_mask.dim() == 2 and not bool(attention_mask.all()):
        raise ValueError(
            f"{ATTN_NAME}: padding attention masks are not supported; pack samples into one row and pass "
            "position_ids that restart at 0 at each sample"
        )
    return None


def register() -> None:
    """Register the attention and mask functions under ``ATTN_NAME`` (idempotent)."""
    AttentionInterface.register(ATTN_NAME, sp_attention_forward)
    AttentionMaskInterface.register(ATTN_NAME, sp_mask)


def _llm(model):
    return model.language_model if hasattr(model, "language_model") else model


def apply_sequence_parallel(model, mesh: SPMesh | None = None, attn_backend: str | None = None):
    """Make a HF causal LM (or a VLM with ``.language_model``) use sequence-parallel attention on ``mesh``
    (default: one rank) with the block kernels of ``attn_backend`` (``backends.BACKENDS``; None keeps the
    model's current choice, else ``auto``). Validates the head counts against the Ulysses degree and the
    backend's packages. Returns the model."""
    mesh = mesh or SPMesh.single()
    llm = _llm(model)
    if attn_backend is None:
        attn_backend = getattr(llm, _BACKEND_ATTR, "auto")
    check_choice(attn_backend)
    cfg = llm.config
    mesh.dims.validate_heads(cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None))
    register()
    llm.set_attn_implementation(ATTN_NAME)
    for m in llm.modules():
        if hasattr(m, "layer_idx") or m is llm:
            setattr(m, _MESH_ATTR, mesh)
            setattr(m, _BACKEND_ATTR, attn_backend)
    return model


def remove_sequence_parallel(model, attn_implementation: str = "sdpa"):
    """Undo ``apply_sequence_parallel`` (select ``attn_implementation`` again)."""
    llm = _llm(model)
    llm.set_attn_implementation(attn_implementation)
    for m in llm.modules():
        for attr in (_MESH_ATTR, _BACKEND_ATTR):
            if hasattr(m, attr):
                delattr(m, attr)
    _PLAN_CACHE.clear()
    return model
