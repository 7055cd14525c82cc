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
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .attention import logn_scale, segment_ids_from_positions, sp_attention
from .mesh import SPMesh

ATTN_NAME = "longvila_sp"
LOGN_KEY = "logn_attention_base"  # text-config attribute: log-n scaling base (positions); 0 or absent = off
_MESH_ATTR = "_longvila_sp_mesh"


def _decode_attention(q, k, v, scale):
    """q (B, H, Sq, D) against a longer cache k/v (B, Hkv, Sk, D), causal aligned to the end."""
    sq, sk = q.shape[2], k.shape[2]
    mask = None
    if sq > 1:
        mask = torch.ones(sq, sk, dtype=torch.bool).tril(diagonal=sk - sq)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=k.shape[1] != q.shape[1])


def sp_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                         is_causal=None, sliding_window=None, **kwargs):
    """The ``AttentionInterface`` function: query (B, H, S, D), key/value (B, Hkv, S_kv, D) ->
    (out (B, S, H, D), None)."""
    if dropout:
        raise ValueError(f"{ATTN_NAME}: attention dropout is not supported (got {dropout})")
    if sliding_window is not None:
        raise ValueError(f"{ATTN_NAME}: sliding-window attention is not supported")
    mesh = getattr(module, _MESH_ATTR, None) or SPMesh.single()
    pos = kwargs.get("position_ids")
    base = getattr(getattr(module, "config", None), LOGN_KEY, 0) or 0
    if base:
        if pos is None:  # no packing: positions count from the start of the cache
            pos = torch.arange(key.shape[2] - query.shape[2], key.shape[2])[None]
            if mesh.sp_size > 1:
                raise ValueError(f"{ATTN_NAME}: log-n scaling on {mesh.sp_size} SP ranks needs the global "
                                 "position_ids of the shard")
        query = logn_scale(query, pos, int(base))
    if key.shape[2] == query.shape[2]:
        seg = None if pos is None else segment_ids_from_positions(pos, mesh, query.shape[0])
        out = sp_attention(query, key, value, mesh, seg, scaling)
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


def apply_sequence_parallel(model, mesh: SPMesh | None = None):
    """Make a HF causal LM (or a VLM with ``.language_model``) use sequence-parallel attention on ``mesh``
    (default: one rank). Validates the head counts against the Ulysses degree. Returns the model."""
    mesh = mesh or SPMesh.single()
    llm = _llm(model)
    cfg = llm.config
    mesh.dims.validate_heads(cfg.num_attention_heads, getattr(cfg, "num_key_value_heads", None))
    register()
    llm.set_attn_implementation(ATTN_NAME)
    for m in llm.modules():
        if hasattr(m, "layer_idx") or m is llm:
            setattr(m, _MESH_ATTR, mesh)
    return model


def remove_sequence_parallel(model, attn_implementation: str = "sdpa"):
    """Undo ``apply_sequence_parallel`` (select ``attn_implementation`` again)."""
    llm = _llm(model)
    llm.set_attn_implementation(attn_implementation)
    for m in llm.modules():
        if hasattr(m, _MESH_ATTR):
            delattr(m, _MESH_ATTR)
    return model
