"""Vision-tower pretraining with SigLIP's sigmoid image-text loss, for a model built from scratch.

LongVILA's stage 1 starts from a *pretrained* SigLIP and trains only the projector. Offline there are no
SigLIP weights, and a random tower gives features that barely depend on the image; language-model
training then learns to ignore the visual tokens (held-out caption loss was identical with the true and
with another sample's image), and training the tower with the LM loss collapses its features further. So
a from-scratch run first pretrains the tower the way SigLIP itself is pretrained, on the image-caption
set, and the five stages then run as in the paper. With ``model.vision_pretrained`` (real SigLIP weights)
this step is skipped.

Design choices:
- The loss is SigLIP's pairwise sigmoid loss (Zhai et al. 2023): every image-caption pair of a batch is
  a binary match / no-match problem, logits ``exp(t) * <img, txt> + b`` with t = log 10 and b = -10 at
  init, summed over pairs and divided by the batch size.
- Image embedding: the tower's patch tokens concatenated, then a linear head (SigLIP's own head is a
  multi-head attention pool; the tiny tower has 4 patches, and a mean would blur where each digit of a
  code card stands). Text tower: a bag of token embeddings plus a bag of (position, token) embeddings
  and a linear head - enough for the captions' attribute words and the order of a code's digits; both
  heads are thrown away afterwards.
- Deterministic: the heads and batches come from ``seed``, so every rank computes the same tower; ranks
  of a process group then also take rank 0's tower (a broadcast), so they cannot diverge.
- The last ``heldout`` pairs are never trained on; image-to-caption retrieval accuracy on them (a caption
  identical to the true one counts as a hit) is reported against chance 1/heldout.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from longvila.pipelines.config import VisionPretrainCfg

log = logging.getLogger(__name__)


def load_pairs(data_root: str | Path, sets: tuple[str, ...], processor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The single-image samples of ``sets``: pixel_values (N, 3, S, S) and N caption token-id tensors (answer tokens)."""
    from longvila.pipelines.datasource import encode_sample, load_pool

    pool = load_pool(str(data_root), tuple(sets))
    pix, caps, skipped = [], [], 0
    for s in pool:
        enc = encode_sample(s, 1, 1 << 20, processor)
        pv = enc["pixel_values"]
        if pv is None or pv.shape[0] != 1 or not bool((enc["labels"] != -100).any()):
            skipped += 1
            continue
        pix.append(pv)
        caps.append(enc["input_ids"][enc["labels"] != -100])
    if skipped:
        log.info("vision pretraining: %d of %d samples of %s are not single-image captions, skipped",
                 skipped, len(pool), list(sets))
    if len(pix) < 4:
        raise ValueError(f"{data_root}: sets {list(sets)} hold {len(pix)} single-image caption samples; "
                         "vision pretraining needs at least 4")
    return torch.cat(pix), caps


class PairHeads(nn.Module):
    """Image head (patch tokens -> dim), order-aware bag-of-embeddings text tower (-> dim), temperature, bias.

    The text tower sums two bags: one of tokens (attribute words wherever they stand) and one of
    (position, token) pairs, so that "code 471" and "code 174" differ; a plain bag cannot tell them apart
    and the tower would never have to read the digits in order."""

    MAX_POS = 32

    def __init__(self, vision_hidden: int, vocab: int, dim: int, patches: int = 1):
        super().__init__()
        self.vocab = vocab
        self.image = nn.Linear(vision_hidden * patches, dim)
        self.text_emb = nn.EmbeddingBag(vocab, dim, mode="mean")
        self.text_pos = nn.EmbeddingBag(vocab * self.MAX_POS, dim, mode="mean")
        self.text = nn.Linear(dim, dim)
        self.log_t = nn.Parameter(torch.tensor(math.log(10.0)))
        self.bias = nn.Parameter(torch.tensor(-10.0))

    def embed_images(self, tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """pixel_values (B, 3, S, S) -> unit vectors (B, dim)."""
        return F.normalize(self.image(tower(pixel_values).flatten(1)), dim=-1)

    def embed_texts(self, captions: list[torch.Tensor]) -> torch.Tensor:
        """B token-id tensors -> unit vectors (B, dim)."""
        dev = self.log_t.device  # captions are token tensors on the host
        flat = torch.cat(captions).to(dev)
        offsets = torch.tensor([0] + [len(c) for c in captions[:-1]]).cumsum(0).to(dev)
        pos = torch.cat([torch.arange(len(c)).clamp(max=self.MAX_POS - 1) for c in captions]).to(dev)
        bags = self.text_emb(flat, offsets) + self.text_pos(pos * self.vocab + flat, offsets)
        return F.normalize(self.text(bags), dim=-1)


def sigmoid_loss(img: torch.Tensor, txt: torch.Tensor, log_t: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """SigLIP loss of img (B, D) and txt (B, D), pair i <-> i matching: -sum log sigmoid(z * logit) / B."""
    logits = img @ txt.T * log_t.exp() + bias
    z = 2 * torch.eye(len(img), dtype=logits.dtype, device=logits.device) - 1
    return -F.logsigmoid(z * logits).sum() / len(img)


def retrieval_accuracy(heads: PairHeads, tower: nn.Module, pix: torch.Tensor, caps: list[torch.Tensor]) -> float:
    """Share of images whose best-scoring caption (among ``caps``) is their own caption's text."""
    with torch.no_grad():
        best = (heads.embed_images(tower, pix) @ heads.embed_texts(caps).T).argmax(1)
    return sum(torch.equal(caps[int(j)], caps[i]) for i, j in enumerate(best)) / len(caps)


def _with_fresh_cards(pix: torch.Tensor, caps: list[torch.Tensor], n: int, rng, processor, hand_frac: float,
                      captions: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The batch plus ``n`` freshly drawn code cards with their align-style captions (the same draws as
    ``datasource.card_sample``, rendered in one batch; ``captions`` keeps each code's caption tokens, computed
    once per run).
    NOTE: two cards of a batch with the same code are a true match the loss counts as a mismatch; with 1,000
    codes and tens of cards a batch, that is rare noise."""
    from longvila.data.world import random_card

    size = pix.shape[-1]
    codes, cards = [], []
    for _ in range(n):
        code, card = random_card(rng, "train", size, size, hand_frac)
        cards.append(card)
        codes.append(code)
        if code not in captions:
            captions[code] = _card_caption(processor, code)
    fresh = processor.preprocess_frames(np.stack(cards)).to(pix.device)
    return torch.cat([pix, fresh]), caps + [captions[c] for c in codes]


def _card_caption(processor, code: str) -> torch.Tensor:
    """The caption tokens of a card of ``code`` as ``load_pairs`` reads them from an align sample."""
    from longvila.pipelines.datasource import CARD_PROMPT, card_caption

    conv = [{"from": "human", "value": f"<image>\n{CARD_PROMPT}"}, {"from": "gpt", "value": card_caption(code)}]
    enc = processor.encode_conversation(conv, [1])
    return enc["input_ids"][enc["labels"] != -100]


def pretrain_vision_tower(tower: nn.Module, vision_hidden: int, vocab: int, data_root: str | Path, processor,
                          cfg: VisionPretrainCfg, seed: int = 0) -> dict[str, Any]:
    """Train ``tower`` ((N, 3, S, S) -> (N, P, vision_hidden)) in place; returns losses and held-out retrieval.

    Runs on the rank's GPU when there is one (the tower stays there; the engine then moves the whole model
    to the same device), else on the CPU."""
    from longvila.utils import progress

    dev = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    tower.to(dev)
    pix, caps = load_pairs(data_root, cfg.sets, processor)
    pix = pix.to(dev)
    heldout = min(cfg.heldout, len(caps) // 2)
    train_pix, train_caps = pix[:-heldout], caps[:-heldout]
    test_pix, test_caps = pix[-heldout:], caps[-heldout:]
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        heads = PairHeads(vision_hidden, vocab, cfg.dim, patches=int(tower(pix[:1]).shape[1])).to(dev)
    was_training = tower.training
    tower.train()
    params = [p for p in tower.parameters()] + list(heads.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / cfg.steps))))
    acc_before = retrieval_accuracy(heads, tower, test_pix, test_caps)
    batch = min(cfg.batch, len(train_caps))
    card_rng, card_captions = np.random.default_rng([seed, 29]), {}
    losses = []
    for _ in progress(range(cfg.steps), desc="vision pretraining", total=cfg.steps, unit="step"):
        idx = torch.randperm(len(train_caps), generator=gen)[:batch]
        pix_b, caps_b = train_pix[idx.to(dev)], [train_caps[i] for i in idx]
        if cfg.fresh_cards:
            pix_b, caps_b = _with_fresh_cards(pix_b, caps_b, cfg.fresh_cards, card_rng, processor, cfg.hand_frac,
                                              card_captions)
        loss = sigmoid_loss(heads.embed_images(tower, pix_b), heads.embed_texts(caps_b), heads.log_t, heads.bias)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    tower.train(was_training)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        from longvila.parallel.comm import collective_device

        dev = collective_device()
        for p in tower.parameters():
            buf = p.data.to(dev)
            torch.distributed.broadcast(buf, src=0)
            p.data.copy_(buf)
    tail = max(1, len(losses) // 10)
    return {
        "steps": cfg.steps, "pairs": len(train_caps), "batch": batch,
        "loss_first": losses[0] if losses else None,
        "loss_last": sum(losses[-tail:]) / tail if losses else None,
        "heldout": heldout, "retrieval_before": acc_before,
        "retrieval": retrieval_accuracy(heads, tower, test_pix, test_caps), "chance": 1 / heldout,
    }
