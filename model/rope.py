"""Dynamic YaRN: the LLM's RoPE rescaled at inference for an input longer than the model trained on.

A model trained on sequences of up to T positions meets, at 4x that length, rotation angles its slow RoPE
dimensions never saw; the tiny model then still attends to the needle (weight ~1.0) but some of its heads
turn to the far prompt start, and readings of the needle's digits slip. YaRN (Peng et al. 2023, "NTK-by-
parts") interpolates exactly those slow dimensions by a factor s, keeps the fast ones, and scales the logits
by (0.1 ln s + 1)^2; its dynamic form picks s = max(1, L / T) for an input of L positions, so an input that
fits in T is computed exactly as in training.

Design choices:
- T is the LLM config's ``dynamic_yarn_positions`` (written by the long-video stage; 0 or absent: off). The
  rotation table comes from transformers' own YaRN initialiser (``ROPE_INIT_FUNCTIONS["yarn"]``) on a copy of
  the config, so the frequencies are the library's.
- ``rope_for_length(llm, L)`` is a context manager the caller enters with the *whole* length of what it is
  about to compute (prompt + answer, or prompt + new tokens): a prefix cached in one call and the suffix run
  in the next then share one rotation table, and every rank of a sharded forward uses the same one. (HF's
  "dynamic" RoPE instead re-derives the table from each call's own positions, which a cached prefix and its
  continuation would not share.)
- YaRN's logit temperature ((0.1 ln s + 1)^2) is left out (attention factor 1) when the model already
  scales its logits by log-n (``logn_attention_base``, trained with it in stage 5): both correct the same
  entropy growth, and applying the two over-sharpened attention. Chosen on a development grid (seed 1,
  another haystack; 6,000-frame grid columns 3,600-6,000: 94.8% with the temperature, 96.3% without), not
  on the reported grid.
- Only plain RoPE (``rope_type`` "default") is rescaled; a model already configured for another scaling is
  an error, not a silent double scaling.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

from longvila.parallel.hf import LOGN_KEY

DYNAMIC_YARN_KEY = "dynamic_yarn_positions"


def yarn_factor(config, length: int) -> float:
    """The YaRN factor for an input of ``length`` positions: length / T past T, else 1.0 (also when off)."""
    trained = int(getattr(config, DYNAMIC_YARN_KEY, 0) or 0)
    return length / trained if trained and length > trained else 1.0


def _rotary(llm):
    decoder = llm.get_decoder() if hasattr(llm, "get_decoder") else llm
    rot = getattr(decoder, "rotary_emb", None)
    if rot is None or not hasattr(rot, "inv_freq"):
        raise ValueError(f"{type(llm).__name__}: no rotary embedding (decoder.rotary_emb) to rescale for dynamic YaRN")
    return rot


@contextlib.contextmanager
def rope_for_length(llm, length: int) -> Iterator[float]:
    """Inside the block, ``llm`` (a HF causal LM) rotates with the dynamic-YaRN table for ``length`` positions;
    yields the factor (1.0: the trained table, unchanged). The trained table is restored on exit."""
    config = llm.config
    factor = yarn_factor(config, length)
    if factor == 1.0:
        yield factor
        return
    params = dict(getattr(config, "rope_parameters", None) or {})
    if params.get("rope_type", "default") != "default":
        raise ValueError(f"dynamic YaRN rescales plain RoPE; this model's rope_type is {params['rope_type']!r}")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rot = _rotary(llm)
    scaled = copy.deepcopy(config)
    scaled.rope_parameters = {"rope_type": "yarn", "rope_theta": params["rope_theta"], "factor": float(factor),
                              "original_max_position_embeddings": int(getattr(config, DYNAMIC_YARN_KEY))}
    if getattr(config, LOGN_KEY, None):
        scaled.rope_parameters["attention_factor"] = 1.0
    inv_freq, attention_scaling = ROPE_INIT_FUNCTIONS["yarn"](scaled, device=rot.inv_freq.device)
    saved = rot.inv_freq, rot.attention_scaling
    rot.inv_freq, rot.attention_scaling = inv_freq.to(saved[0].dtype), attention_scaling
    try:
        yield factor
    finally:
        rot.inv_freq, rot.attention_scaling = saved
