"""The model side of every evaluation: load a checkpoint, encode frames once, score and generate.

Design choices:
- The evaluations touch the model only through the contract in docs/design.md: ``encode_frames``,
  ``merge_visual_tokens``, ``language_model`` and the processor's ``preprocess_frames`` / ``build_prompt``.
  Visual tokens are merged here, so embeddings computed once (and cached) serve every prompt built on them.
- Frame embeddings are cached as safetensors files keyed by (video key, frame count, model hash); the key is
  also stored in the file's metadata and checked on read, so a stale or foreign cache file is recomputed,
  never silently used.
- Teacher-forced exact match: the answer is appended to the prompt and the answer is correct when the argmax
  at every answer position equals the answer token. For a fixed-length answer this is exactly "greedy
  generation reproduces the answer", at the cost of one forward pass for a whole batch of needles.
- Every LLM call runs inside ``model.rope.rope_for_length`` with the whole length it computes, so an input
  longer than the model trained on gets dynamic-YaRN RoPE (a no-op within the trained length).
- Device-generic: the model sits on ``eval_device()`` (the rank's GPU under torchrun, ``cuda`` when one is
  present, else the CPU); every tensor made here is made on the device of what it meets, and what leaves
  (cached embeddings, predicted ids, scores) comes back to the CPU.
- Only the last few positions go through the LM head (``logits_to_keep``): a 6,000-token prompt then costs
  a (B, k, vocab) logits tensor, not (B, 6000, vocab). Rows that share a prefix (the haystack before a
  needle, or the whole prompt of a no-needle control) run that prefix once and share its key/value cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from longvila.model.rope import rope_for_length
from longvila.utils import atomic_write_bytes, sha256_file


@dataclass
class LoadedModel:
    model: torch.nn.Module
    processor: object
    ckpt: Path
    model_hash: str

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def eos_ids(self) -> list[int]:
        tok = self.tokenizer
        ids = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        return [i for i in ids if isinstance(i, int) and i >= 0]


def model_hash(ckpt: str | os.PathLike) -> str:
    """First 16 hex digits of the sha256 over the checkpoint's weight files (safetensors) and config."""
    ckpt = Path(ckpt)
    files = sorted(ckpt.glob("*.safetensors")) + sorted(ckpt.glob("config.json"))
    if not files:
        raise FileNotFoundError(f"{ckpt}: no *.safetensors weights (is this a saved LongVILA checkpoint?)")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + sha256_file(f).encode())
    return h.hexdigest()[:16]


def eval_device() -> torch.device:
    """Where evaluations put a model: ``cuda:$LOCAL_RANK`` when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def device_of(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def load_model(ckpt: str | os.PathLike, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None) -> LoadedModel:
    """Load a ``save_pretrained`` LongVILA checkpoint (model + processor) for inference on ``device``
    (default ``eval_device()``)."""
    from longvila.model import LongVILAForCausalLM, LongVILAProcessor
    from longvila.parallel.hf import LOGN_KEY, apply_sequence_parallel

    ckpt = Path(ckpt)
    if not (ckpt / "config.json").is_file():
        raise FileNotFoundError(f"{ckpt}: not a checkpoint folder (no config.json)")
    digest = model_hash(ckpt)
    model = LongVILAForCausalLM.from_pretrained(ckpt, dtype=dtype).eval().to(device or eval_device())
    if getattr(model.config.text_config, LOGN_KEY, 0):  # log-n scaling lives in the project's attention
        apply_sequence_parallel(model)
    processor = LongVILAProcessor.from_pretrained(ckpt)
    return LoadedModel(model, processor, ckpt, digest)


@torch.inference_mode()
def encode_frames(lm: LoadedModel, frames: np.ndarray, batch: int = 256,
                  desc: str | None = None) -> torch.Tensor:
    """uint8 frames (N, H, W, 3) -> visual tokens (N, T, D), encoded in batches of ``batch`` frames."""
    from longvila.utils import progress

    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"encode_frames: expected uint8 (N, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    chunks = range(0, len(frames), batch)
    if desc:
        chunks = progress(chunks, desc=desc, total=len(chunks), unit="batch")
    dev = device_of(lm.model)
    out = [lm.model.encode_frames(lm.processor.preprocess_frames(frames[i:i + batch]).to(dev)).float().cpu()
           for i in chunks]
    return torch.cat(out)


def cached_embeddings(lm: LoadedModel, cache_dir: str | os.PathLike, video_key: str, num_frames: int,
                      frames_fn: Callable[[], np.ndarray], exact: bool = True) -> tuple[torch.Tensor, bool]:
    """Visual tokens (n, T, D) of a video sampled to ``num_frames``, from the cache or computed once and cached.

    Returns (embeddings, hit). ``frames_fn()`` is called only on a miss and returns (n, H, W, 3) frames;
    n == num_frames unless ``exact`` is False (a video shorter than the count gives all its frames).
    """
    from safetensors import safe_open
    from safetensors.torch import save

    safe_key = hashlib.sha256(video_key.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"emb-{safe_key}-{num_frames}f-{lm.model_hash}.safetensors"
    meta = {"video": video_key, "num_frames": str(num_frames), "model_hash": lm.model_hash}
    if path.is_file():
        try:
            with safe_open(str(path), framework="pt") as f:
                if f.metadata() == meta:
                    emb = f.get_tensor("embeddings")
                    if emb.shape[0] == num_frames or not exact:
                        return emb, True
        except Exception:  # noqa: BLE001 - a corrupt cache file is recomputed below
            pass
    frames = frames_fn()
    if exact and len(frames) != num_frames:
        raise ValueError(f"{video_key}: expected {num_frames} frames, got {len(frames)}")
    emb = encode_frames(lm, frames, desc=f"encode {len(frames)} frames")
    atomic_write_bytes(path, save({"embeddings": emb.contiguous()}, metadata=meta))
    return emb, False


def prompt_ids(lm: LoadedModel, question: str, num_frames: int | None) -> torch.Tensor:
    """Prompt ids (L,) for a question after ``num_frames`` frames (``None``: no video), ending with the
    assistant header."""
    ids = lm.processor.build_prompt(question, num_frames)
    return torch.as_tensor(ids, dtype=torch.long).reshape(-1)


def answer_ids(lm: LoadedModel, answer: str) -> list[int]:
    return list(lm.tokenizer.encode(answer, add_special_tokens=False))


@torch.inference_mode()
def embed(lm: LoadedModel, input_ids: torch.Tensor, visual: torch.Tensor | None) -> torch.Tensor:
    """input_ids (B, L) + visual tokens (N, T, D) for all rows -> inputs_embeds (B, L, D) on the model's device."""
    dev = device_of(lm.model)
    if visual is None:
        return lm.model.language_model.get_input_embeddings()(input_ids.to(dev))
    return lm.model.merge_visual_tokens(input_ids.to(dev), visual.to(dev, lm.model.dtype))


@torch.inference_mode()
def teacher_forced_argmax(lm: LoadedModel, inputs_embeds: torch.Tensor, k: int) -> torch.Tensor:
    """inputs_embeds (B, L, D) whose last k positions embed an answer -> argmax ids (B, k) predicted for those
    k answer tokens (at positions L-k-1 .. L-2). The answer is an exact match when they equal it."""
    llm = lm.model.language_model
    with rope_for_length(llm, inputs_embeds.shape[1]):
        out = llm(inputs_embeds=inputs_embeds, logits_to_keep=k + 1, use_cache=False)
    return out.logits[:, :k].argmax(-1).cpu()


def _after_prefix(llm, prefix: torch.Tensor, suffixes: torch.Tensor, logits_to_keep: int = 0):
    """Run ``suffixes`` (B, S, D) after one shared ``prefix`` (1, P >= 1, D): the prefix's key/value cache is
    computed with batch 1 and repeated for the B rows. Returns (the prefix's last-position logits (1, 1, V),
    the suffix output)."""
    from longvila.model.kv_cache import cache_kwargs, output_cache

    first = llm(inputs_embeds=prefix, use_cache=True, logits_to_keep=1)
    cache = output_cache(first)
    cache.batch_repeat_interleave(suffixes.shape[0])
    p = prefix.shape[1]
    pos = torch.arange(p, p + suffixes.shape[1], device=suffixes.device).expand(suffixes.shape[0], -1)
    out = llm(inputs_embeds=suffixes, position_ids=pos, use_cache=True, **cache_kwargs(llm, cache),
              logits_to_keep=logits_to_keep)
    return first.logits[:, -1:], out


@torch.inference_mode()
def teacher_forced_argmax_shared(lm: LoadedModel, prefix: torch.Tensor, suffixes: torch.Tensor, k: int) -> torch.Tensor:
    """The same as ``teacher_forced_argmax`` on rows that share a prefix, computing the prefix once.

    prefix (1, P, D) (P may be 0), suffixes (B, S, D) ending with the k answer tokens -> argmax ids (B, k).
    The prefix's key/value cache is computed with batch 1 and repeated for the B rows, so a haystack shared
    by B needles before the needle's position costs one row, not B.
    """
    if suffixes.shape[1] < k + 1:
        raise ValueError(f"suffixes have {suffixes.shape[1]} positions; they must hold the position before the "
                         f"first answer token and the {k} answer tokens")
    if prefix.shape[1] == 0:
        return teacher_forced_argmax(lm, suffixes, k)
    llm = lm.model.language_model
    with rope_for_length(llm, prefix.shape[1] + suffixes.shape[1]):
        _, out = _after_prefix(llm, prefix, suffixes, logits_to_keep=k + 1)
    return out.logits[:, :k].argmax(-1).cpu()


@torch.inference_mode()
def option_logprobs(lm: LoadedModel, prefix: torch.Tensor, options: list[list[int]],
                    return_greedy: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Sum of log-probabilities of each option's tokens after a shared prompt (multiple choice scored by
    likelihood, as language-model harnesses do).

    prefix (1, P, D) embeds the prompt (ending with the assistant header, P >= 1); ``options`` are token-id
    lists (each ending with the end-of-turn id, so that "1" and "12" differ) -> (K,) float64. The prompt's
    key/value cache is computed once and repeated for the K options; options are right-padded, which causal
    attention never lets an earlier position see. ``return_greedy`` also returns (K,) bool: every option
    token is the argmax at its position (lmms-eval's ``is_greedy``).
    """
    if prefix.shape[1] < 1 or not options or any(len(o) == 0 for o in options):
        raise ValueError("option_logprobs needs a non-empty prompt and non-empty options")
    llm = lm.model.language_model
    width = max(map(len, options))
    pad = lm.eos_ids[-1] if lm.eos_ids else 0
    ids = torch.tensor([o + [pad] * (width - len(o)) for o in options], dtype=torch.long, device=prefix.device)
    with rope_for_length(llm, prefix.shape[1] + width):
        first, out = _after_prefix(llm, prefix, llm.get_input_embeddings()(ids).to(prefix.dtype))
    # position 0 of every option is predicted by the prompt's last position, token j by option position j-1
    logits = torch.cat([first.expand(len(options), -1, -1), out.logits[:, :-1]], 1)
    logp = torch.log_softmax(logits.double(), -1)
    lp = logp.gather(-1, ids[..., None])[..., 0]
    mask = torch.tensor([[j < len(o) for j in range(width)] for o in options], device=prefix.device)
    total = (lp * mask).sum(-1)
    if not return_greedy:
        return total.cpu()
    return total.cpu(), ((logp.argmax(-1) == ids) | ~mask).all(-1).cpu()


def teacher_forced_correct(lm: LoadedModel, inputs_embeds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Exact match by teacher forcing: inputs_embeds (B, L, D) ending with the answers targets (B, k) -> bool (B,)."""
    return (teacher_forced_argmax(lm, inputs_embeds, targets.shape[1]) == targets.cpu()).all(-1)


@torch.inference_mode()
def generate(lm: LoadedModel, inputs_embeds: torch.Tensor, max_new_tokens: int = 8) -> str:
    """Greedy continuation of one prompt, inputs_embeds (1, L, D) -> decoded text (special tokens removed)."""
    mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long, device=inputs_embeds.device)
    llm = lm.model.language_model
    with rope_for_length(llm, inputs_embeds.shape[1] + max_new_tokens):
        out = llm.generate(
            inputs_embeds=inputs_embeds, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=lm.eos_ids, pad_token_id=lm.eos_ids[-1] if lm.eos_ids else None)
    return lm.tokenizer.decode(out[0], skip_special_tokens=True).strip()
