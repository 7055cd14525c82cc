"""The multi-modal sequence-parallel (MM-SP) training step: two-stage, modality-aware sharding.

Stage a (vision): the frames of the batch are split evenly over the SP ranks (shares differ by at most
one frame); each rank runs ``model.encode_frames`` on its share, and an autograd all-gather assembles all
visual tokens in order on every rank. A rank with no frame encodes one dummy frame and keeps zero rows of
it, so every rank runs the same encoder graph (collectives inside the encoder, e.g. ZeRO-3, cannot hang).

Stage b (language): ``model.merge_visual_tokens`` builds the full embedding sequence; labels are shifted
on the *global* sequence (target of token t = label t+1); the sequence is padded to a multiple of
2 x sp_size (positions continue the last sample, targets -100) and zigzag-sharded by tokens; the LLM runs
on the local shard with its global position ids (the registered SP attention does the rest).

Loss: local CE sum / number of active targets in the whole SP group, so the sum over SP ranks is the
one-process mean (with ``loss_weights``: local weighted CE sum / the group's total weight). Gradients
must therefore be *summed* over the SP group (``reduce_sp_gradients``).
NOTE: a data-parallel wrapper that *averages* gradients over all dp x sp ranks (DDP, DeepSpeed) gets
the right result if the loss is multiplied by ``mesh.sp_size`` before backward.

The model is used only through ``encode_frames``, ``merge_visual_tokens`` and ``language_model``.
The attention plan of the step is made once, on the host, from the global position ids
(``attention.plan_from_positions``); every layer's attention and its backward reuse it. The batch's
tensors stay on their device (the rank's GPU once the trainer moved them); tensors made here follow them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .attention import plan_from_positions, use_plan
from .comm import agree_shapes, all_gather_varlen
from .mesh import SPMesh
from .zigzag import pad_to, padded_length, zigzag_shard

IGNORE_INDEX = -100


@dataclass
class MMSPOutput:
    loss: torch.Tensor  # scalar: local CE sum / active targets in the SP group
    num_active: int  # active targets in the SP group (the whole sequence)
    logits: torch.Tensor  # (B, S_local, V) of the local shard; (B, K, V) at its K labelled positions with labelled_logits
    targets: torch.Tensor  # (B, S_local) shifted labels of the local shard (-100 = ignored); (B, K) likewise
    frames_encoded: int  # frames this rank pushed through the encoder (a dummy counts 0)


def balanced_split(n: int, parts: int) -> list[tuple[int, int]]:
    """[start, end) of each of ``parts`` contiguous shares of n items; sizes differ by at most one."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for p in range(parts):
        end = start + base + (1 if p < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """labels (B, L) -> targets (B, L): target[t] = labels[t+1], last = -100."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def pad_positions(position_ids: torch.Tensor, length: int) -> torch.Tensor:
    """(B, L) -> (B, length): padding continues the last sample's positions (same sample, after it)."""
    extra = length - position_ids.shape[1]
    if extra <= 0:
        return position_ids
    tail = position_ids[:, -1:] + 1 + torch.arange(extra, dtype=position_ids.dtype, device=position_ids.device)
    return torch.cat([position_ids, tail], dim=1)


def encode_frames_balanced(model, pixel_values: torch.Tensor, mesh: SPMesh) -> tuple[torch.Tensor, int]:
    """Stage a: pixel_values (N, 3, S, S) -> all visual tokens (N, T, D) on every rank, each rank encoding
    its balanced share. Returns (visual, frames encoded here)."""
    n = pixel_values.shape[0]
    start, end = balanced_split(n, mesh.sp_size)[mesh.sp_rank]
    if end > start:
        local = model.encode_frames(pixel_values[start:end])
    else:
        dummy = pixel_values.new_zeros((1, *pixel_values.shape[1:]))
        local = model.encode_frames(dummy)[:0]
    return all_gather_varlen(local, mesh.sp_group, 0), end - start


def encode_frames_by_token(model, input_ids: torch.Tensor, pixel_values: torch.Tensor, mesh: SPMesh,
                           image_token_id: int) -> tuple[torch.Tensor, int]:
    """The naive baseline of stage a (benchmarks only): rank p encodes the frames whose ``<image>`` token
    lies in its contiguous 1/P of the token sequence (a frame belongs to the rank of its first token).
    Returns (visual (N, T, D) in frame order on every rank, frames encoded here)."""
    n, p, parts = pixel_values.shape[0], mesh.sp_rank, mesh.sp_size
    flat = (input_ids == image_token_id).reshape(-1).nonzero().squeeze(-1)  # token index of each slot
    first_slot = flat.reshape(n, -1)[:, 0] % input_ids.shape[1]  # position of each frame in its row
    owner = first_slot // -(-input_ids.shape[1] // parts)
    mine = (owner == p).nonzero().squeeze(-1)
    if mine.numel():
        local = model.encode_frames(pixel_values[mine])
    else:
        dummy = pixel_values.new_zeros((1, *pixel_values.shape[1:]))
        local = model.encode_frames(dummy)[:0]
    gathered = all_gather_varlen(local, mesh.sp_group, 0)
    order = torch.cat([(owner == q).nonzero().squeeze(-1) for q in range(parts)])
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return gathered.index_select(0, inverse), int(mine.numel())


def mmsp_forward(model, batch: dict, mesh: SPMesh | None = None, frame_sharding: str = "balanced",
                 labelled_logits: bool = False) -> MMSPOutput:
    """One MM-SP forward on a batch dict: input_ids (B, L), labels (B, L), position_ids (B, L) (optional,
    restarting at 0 per packed sample), pixel_values (N, 3, S, S) (optional), loss_weights (B, L) (optional:
    a weight per labelled token; the loss is then the weighted mean). Every rank of the SP group
    must pass the same batch. The LLM must have had ``apply_sequence_parallel(model, mesh)``.
    ``frame_sharding="token"`` selects the naive stage a (``encode_frames_by_token``), for benchmarks.
    ``labelled_logits``: the LM head runs only at the local positions some row has a target at (the loss is
    the same; visual and prompt tokens, most of a training row, skip the head and its cross-entropy)."""
    mesh = mesh or SPMesh.single()
    input_ids, labels = batch["input_ids"], batch["labels"]
    if input_ids.shape != labels.shape or input_ids.dim() != 2:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and labels {tuple(labels.shape)} must both be (B, L)")
    b, length = input_ids.shape
    position_ids = batch.get("position_ids")
    if position_ids is None:
        position_ids = torch.arange(length, device=input_ids.device).expand(b, -1)
    if position_ids.shape != input_ids.shape:
        raise ValueError(f"position_ids {tuple(position_ids.shape)} != input_ids {tuple(input_ids.shape)}")
    agree_shapes(input_ids, mesh.sp_group, "mmsp_forward(input_ids)")
    pixel_values = batch.get("pixel_values")
    if pixel_values is not None:
        agree_shapes(pixel_values, mesh.sp_group, "mmsp_forward(pixel_values)")
        if frame_sharding == "balanced":
            visual, n_local = encode_frames_balanced(model, pixel_values, mesh)
        elif frame_sharding == "token":
            visual, n_local = encode_frames_by_token(model, input_ids, pixel_values, mesh,
                                                     model.config.image_token_id)
        else:
            raise ValueError(f"frame_sharding must be 'balanced' or 'token', got {frame_sharding!r}")
        embeds = model.merge_visual_tokens(input_ids, visual)
    else:
        n_local = 0
        embeds = model.language_model.get_input_embeddings()(input_ids)
    targets = shift_labels(labels)
    num_active = int((targets != IGNORE_INDEX).sum())
    weights = batch.get("loss_weights")
    if weights is not None:
        if weights.shape != labels.shape:
            raise ValueError(f"loss_weights {tuple(weights.shape)} != labels {tuple(labels.shape)}")
        weights = F.pad(weights[:, 1:].float(), (0, 1)).masked_fill(targets == IGNORE_INDEX, 0.0)
    total = padded_length(length, mesh)
    local_embeds = zigzag_shard(embeds, 1, mesh)
    full_pos = pad_positions(position_ids, total)
    local_pos = zigzag_shard(full_pos, 1, mesh)
    local_tgt = zigzag_shard(pad_to(targets, 1, total, IGNORE_INDEX), 1, mesh)
    plan = plan_from_positions(full_pos, mesh, b)  # the step's attention plan, on the host, once
    keep = {}
    if labelled_logits:  # HF causal LMs take an index tensor: the head sees hidden_states[:, keep]
        idx = (local_tgt != IGNORE_INDEX).any(0).nonzero().squeeze(-1)
        keep = {"logits_to_keep": idx}
        local_tgt = local_tgt[:, idx]
    with use_plan(plan):
        out = model.language_model(inputs_embeds=local_embeds, position_ids=local_pos, use_cache=False, **keep)
    logits = out.logits
    flat = logits.float().reshape(-1, logits.shape[-1])
    if weights is None:
        ce = F.cross_entropy(flat, local_tgt.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum")
        return MMSPOutput(ce / max(num_active, 1), num_active, logits, local_tgt, n_local)
    local_w = zigzag_shard(pad_to(weights, 1, total, 0.0), 1, mesh)
    if labelled_logits:
        local_w = local_w[:, keep["logits_to_keep"]]
    ce = F.cross_entropy(flat, local_tgt.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none")
    denom = float(weights.sum())  # the whole sequence's weight: the same on every SP rank
    return MMSPOutput((ce * local_w.reshape(-1)).sum() / (denom if denom > 0 else 1.0), num_active, logits,
                      local_tgt, n_local)


def reduce_sp_gradients(model: torch.nn.Module, mesh: SPMesh) -> None:
    """Sum parameter gradients over the SP group (one flat all-reduce). Parameters that require grad but
    got none get zeros, so every rank sends the same layout."""
    if mesh.sp_size == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads])
    agree_shapes(flat, mesh.sp_group, "reduce_sp_gradients")
    dist.all_reduce(flat, group=mesh.sp_group)
    offset = 0
    for p, g in zip(params, grads, strict=True):
        n = g.numel()
        p.grad = flat[offset : offset + n].view_as(p).to(p.dtype)
        offset += n
