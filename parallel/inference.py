"""Sequence-parallel inference: a long prefill sharded over the SP ranks, then the answer.

- ``sp_prefill``: the prompt embeddings (B, L, D) are zigzag-sharded; the decoder runs once on the local
  shard with the SP attention (so no rank ever holds the L x L work or all activations); the per-layer
  K/V cache shards and the final hidden states are all-gathered and unshuffled, so that every rank ends
  with the *full* cache and the hidden state of the last prompt token.
- ``sp_generate``: greedy decoding on that gathered cache, locally and identically on every rank (no
  communication per token; the cache of a 6,000-token prompt on the tiny model is a few MB). Decode steps
  have one query against a longer cache, which the registered attention serves locally.
- ``sp_score``: teacher forcing in one sharded forward: the argmax next token and the log-probability of
  each given target, returned for the whole sequence on every rank (the needle evaluation reads the
  argmax at the answer tokens).
The LLM must have had ``apply_sequence_parallel(llm, mesh)``; ``llm`` is a HF causal LM
(``get_decoder()``, ``get_output_embeddings()``). Inputs stay on their device (the rank's GPU when the caller
put the model and the embeddings there); every tensor made here is made on it.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from longvila.model.kv_cache import cache_kwargs, output_cache

from .attention import plan_from_positions, use_plan
from .comm import agree_shapes
from .mesh import SPMesh
from .mmsp import IGNORE_INDEX, pad_positions
from .zigzag import pad_to, padded_length, zigzag_shard, zigzag_unshard


def _shard_inputs(inputs_embeds: torch.Tensor, position_ids: torch.Tensor | None, mesh: SPMesh):
    """-> (local embeds, local positions, padded length, the attention plan made on the host)."""
    b, length = inputs_embeds.shape[:2]
    agree_shapes(inputs_embeds, mesh.sp_group, "sp inference (inputs_embeds)")  # the layers skip it: a plan is given
    total = padded_length(length, mesh)
    plan = None if position_ids is None else plan_from_positions(pad_positions(position_ids.cpu(), total), mesh, b)
    if position_ids is None:
        position_ids = torch.arange(length, device=inputs_embeds.device).expand(b, -1)
        plan = plan_from_positions(None, mesh)
    local_pos = zigzag_shard(pad_positions(position_ids, total), 1, mesh)
    return zigzag_shard(inputs_embeds, 1, mesh), local_pos, total, plan


@torch.no_grad()
def sp_prefill(llm, inputs_embeds: torch.Tensor, mesh: SPMesh | None = None,
               position_ids: torch.Tensor | None = None) -> tuple[DynamicCache, torch.Tensor]:
    """inputs_embeds (B, L, D) -> (full cache of L tokens on every rank, last hidden state (B, D))."""
    mesh = mesh or SPMesh.single()
    length = inputs_embeds.shape[1]
    local, local_pos, _, plan = _shard_inputs(inputs_embeds, position_ids, mesh)
    with use_plan(plan):
        out = llm.get_decoder()(inputs_embeds=local, position_ids=local_pos, use_cache=True)
    hidden = zigzag_unshard(out.last_hidden_state, 1, mesh, length=length)
    cache = DynamicCache(config=llm.config)
    for i, layer in enumerate(output_cache(out).layers):
        k = zigzag_unshard(layer.keys, 2, mesh, length=length)
        v = zigzag_unshard(layer.values, 2, mesh, length=length)
        cache.update(k, v, i)
    return cache, hidden[:, -1]


@torch.no_grad()
def sp_generate(llm, inputs_embeds: torch.Tensor, max_new_tokens: int, mesh: SPMesh | None = None,
                eos_token_id: int | None = None) -> torch.Tensor:
    """Greedy answer after a sharded prefill: inputs_embeds (B, L, D) -> new token ids (B, <= max_new_tokens).

    Stops early when every row has produced ``eos_token_id`` (rows that finished are padded with it).
    """
    length = inputs_embeds.shape[1]
    cache, last = sp_prefill(llm, inputs_embeds, mesh)
    head = llm.get_output_embeddings()
    tok = head(last).argmax(-1, keepdim=True)  # (B, 1)
    out, done = [tok], torch.zeros(tok.shape[0], dtype=torch.bool, device=tok.device)
    for t in range(max_new_tokens - 1):
        if eos_token_id is not None:
            done |= tok[:, 0] == eos_token_id
            if bool(done.all()):
                break
        pos = torch.full_like(tok, length + t)
        logits = llm(input_ids=tok, position_ids=pos, use_cache=True, **cache_kwargs(llm, cache)).logits[:, -1]
        tok = logits.argmax(-1, keepdim=True)
        if eos_token_id is not None:
            tok = tok.masked_fill(done[:, None], eos_token_id)
        out.append(tok)
    return torch.cat(out, dim=1)


@torch.no_grad()
def sp_score(llm, inputs_embeds: torch.Tensor, targets: torch.Tensor, mesh: SPMesh | None = None,
             position_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Teacher forcing: inputs_embeds (B, L, D), targets (B, L) (target[t] = the token expected after
    position t, -100 = none) -> {"argmax": (B, L) predicted next token, "logprob": (B, L) log p(target)
    (0 where ignored)}, full length on every rank."""
    mesh = mesh or SPMesh.single()
    length = inputs_embeds.shape[1]
    if targets.shape != inputs_embeds.shape[:2]:
        raise ValueError(f"targets {tuple(targets.shape)} != inputs_embeds (B, L) {tuple(inputs_embeds.shape[:2])}")
    local, local_pos, total, plan = _shard_inputs(inputs_embeds, position_ids, mesh)
    local_tgt = zigzag_shard(pad_to(targets, 1, total, IGNORE_INDEX), 1, mesh)
    with use_plan(plan):
        logits = llm(inputs_embeds=local, position_ids=local_pos, use_cache=False).logits.float()
    logp = torch.log_softmax(logits, -1)
    keep = local_tgt != IGNORE_INDEX
    lp = logp.gather(-1, local_tgt.clamp(min=0).unsqueeze(-1)).squeeze(-1).masked_fill(~keep, 0.0)
    return {
        "argmax": zigzag_unshard(logits.argmax(-1), 1, mesh, length=length),
        "logprob": zigzag_unshard(lp, 1, mesh, length=length),
    }
