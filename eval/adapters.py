"""Model adapters: what the needle grid and the VideoMME sweep need from any video LLM (``VideoLM``).

An evaluation suite's users bring their own models. Every evaluation here reaches the model only through a
``VideoLM``, loaded by ``load_adapter(model_type, ckpt)``:

    longvila    this project's LongVILAForCausalLM (``eval/runner.py``: today's path, unchanged numerics)
    qwen2_vl    Hugging Face Qwen2VLForConditionalGeneration          (M-RoPE, 2 frames per temporal patch)
    qwen2_5_vl  Hugging Face Qwen2_5_VLForConditionalGeneration       (the same, windowed vision attention)
    llava_onevision   Hugging Face LlavaOnevisionForConditionalGeneration
    llava_next_video  Hugging Face LlavaNextVideoForConditionalGeneration
    auto        the ``model_type`` that the checkpoint's config.json names

The contract (shapes: frames are uint8 (N, H, W, 3)):
- ``visual(frames, level)``: what one row's video is at that level. ``"embedding"`` (adapters whose frames
  are encoded independently, ``"embedding" in levels``): per-frame visual tokens (N, T, D), so the needle
  grid encodes a haystack once and swaps the needle frame's tokens in at each depth, as V-NIAH does.
  ``"frame"`` (every adapter): the frames themselves at the model's input size; the row is encoded with the
  model's own video path when it is scored (Qwen2-VL's temporal patches, LLaVA's pooling and newline).
- ``prompt_text(question, num_frames)``: the chat prompt as the model's own processor and template render it.
- ``teacher_forced(question, rows, answers)``: argmax ids at each answer position with the answer appended
  (exact match = greedy generation reproduces the answer); ``generate``: greedy reply; ``option_logprobs``:
  summed log-probabilities of candidate continuations.
- ``visual_tokens(n)``, ``max_context``, ``max_frames(question, answer_tokens)``: the sequence arithmetic,
  so a frame count beyond the model's context is refused before any work, naming the largest that fits.
- ``model_type``, ``ckpt``, ``model_hash`` name the model in every result file.

Design choices:
- The Hugging Face adapters call the model's own ``forward``/``generate`` on the processor's own inputs
  (``input_ids``, ``pixel_values_videos``, ``video_grid_thw`` ...), so positions are the model's (3-D M-RoPE
  for Qwen2-VL), the video path is the model's, and nothing of a model's internals is re-implemented here.
  The price is that they run at frame level: each row is encoded again. A test compares their logits with
  the model's forward on the same processor output.
- The answer is appended at the id level (``tokenizer.encode(answer)`` after the prompt's ids), never by
  re-tokenising prompt + answer, so the scored tokens are exactly the answer's tokens.
- Frame counts are sampled by the evaluation, not by the processor (``do_sample_frames=False``): a needle
  frame placed among the sampled frames is always seen.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np
import torch

from longvila.eval import runner

MODEL_TYPES = ("longvila", "qwen2_vl", "qwen2_5_vl", "llava_onevision", "llava_next_video")
LEVELS = ("embedding", "frame")


class VideoLM(ABC):
    """A video LLM as the evaluations see it (see the module docstring for the contract)."""

    model_type: str
    ckpt: Path
    model_hash: str
    levels: tuple[str, ...] = ("frame",)
    has_likelihood = True  # option_logprobs is available
    input_size: tuple[int, int]  # (H, W) frames are given at (needle cards are rendered at it)

    # ------------------------------------------------------------------ text
    @property
    @abstractmethod
    def tokenizer(self): ...

    @property
    @abstractmethod
    def eos_ids(self) -> list[int]: ...

    def answer_ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    @abstractmethod
    def prompt_text(self, question: str, num_frames: int | None) -> str:
        """The rendered chat prompt (before visual placeholders are expanded), ending with the assistant header."""

    # ------------------------------------------------------------------ sizes
    @property
    @abstractmethod
    def max_context(self) -> int | None:
        """The longest sequence (tokens) the model takes; None: no fixed limit."""

    @abstractmethod
    def visual_tokens(self, num_frames: int) -> int:
        """LLM tokens that ``num_frames`` frames become."""

    def sequence_length(self, question: str, num_frames: int | None, answer_tokens: int = 0) -> int:
        """Tokens of the prompt with ``num_frames`` frames plus an answer of ``answer_tokens`` tokens."""
        text = len(self.answer_ids(self.prompt_text(question, num_frames)))
        return text + (self.visual_tokens(num_frames) - 1 if num_frames else 0) + answer_tokens

    def max_frames(self, question: str, answer_tokens: int = 0, upto: int = 1 << 20) -> int | None:
        """The largest frame count (<= ``upto``) whose sequence fits ``max_context``; None without a limit."""
        if self.max_context is None:
            return None
        lo, hi = 0, upto
        while lo < hi:  # visual tokens grow with the frame count: bisect
            mid = (lo + hi + 1) // 2
            if self.sequence_length(question, mid, answer_tokens) <= self.max_context:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def check_fits(self, question: str, num_frames: int, answer_tokens: int = 0, what: str = "") -> None:
        """ValueError naming the largest frame count that fits when ``num_frames`` frames do not."""
        if self.max_context is None:
            return
        need = self.sequence_length(question, num_frames, answer_tokens)
        if need > self.max_context:
            fit = self.max_frames(question, answer_tokens, upto=num_frames)
            raise ValueError(f"{what or self.model_type}: {num_frames} frames make {need:,} tokens, beyond the "
                             f"model's context of {self.max_context:,} ({self.ckpt}); the largest frame count that "
                             f"fits is {fit}")

    # ------------------------------------------------------------------ visual inputs
    def visual(self, frames: np.ndarray, level: str = "frame"):
        """One row's video at ``level`` (see the module docstring): uint8 frames or per-frame tokens (N, T, D)."""
        if level not in self.levels:
            raise ValueError(f"{self.model_type}: level {level!r} is not supported (it supports {', '.join(self.levels)})")
        return fit_frames(frames, self.input_size)

    def cached_visual(self, cache_dir, key: str, num_frames: int, frames_fn, level: str,
                      exact: bool = True, path: os.PathLike | None = None) -> tuple[object, bool]:
        """(``visual`` of a video sampled to ``num_frames`` frames, whether it came from the cache): embeddings
        are cached where the level has any. ``frames_fn()`` gives the frames; n == num_frames unless not
        ``exact`` (a shorter video gives all its frames). ``path``: the video file, for adapters that read it."""
        frames = frames_fn()
        if exact and len(frames) != num_frames:
            raise ValueError(f"{key}: expected {num_frames} frames, got {len(frames)}")
        return self.visual(frames, level), False

    # ------------------------------------------------------------------ scoring
    @abstractmethod
    def teacher_forced(self, question: str, rows: list, answers: torch.Tensor, shared_frames: int | None = None,
                       ) -> torch.Tensor:
        """rows: one visual per row (all at one level, all with the same frame count), answers (B, k) ids ->
        argmax ids (B, k) at the answer positions. ``shared_frames``: the rows' visuals are equal up to this
        frame (None: entirely); an adapter may compute that shared prefix once."""

    @abstractmethod
    def generate(self, question: str, visual, max_new_tokens: int = 8) -> str:
        """Greedy reply (special tokens removed) to ``question`` after ``visual`` (None: no video)."""

    @abstractmethod
    def option_logprobs(self, question: str, visual, options: list[list[int]]) -> list[float]:
        """Summed log-probability of each candidate continuation (token ids) after the prompt."""

    def describe(self, frames: np.ndarray, prompt: str, max_new_tokens: int = 64) -> str:
        """Free text about ``frames`` (uint8 (N, H, W, 3)) for ``prompt``: a clip captioner."""
        return self.generate(prompt, self.visual(frames, "frame"), max_new_tokens)

    # ------------------------------------------------------------------ sharding
    can_shard = False  # the MM-SP sharded forward (``shard``) needs embedding-level rows into a plain causal LM

    def shard(self, mesh) -> None:
        """Shard every later forward pass over ``mesh`` (MM-SP inference), or refuse."""
        raise ValueError(f"{self.model_type}: the sharded grid (--nproc > 1) needs embedding-level inputs into a "
                         f"plain causal LM; this adapter runs its model's own forward on one process (--nproc 1)")

    def describe_model(self) -> dict:
        return {"model_type": self.model_type, "model": str(self.ckpt), "model_hash": self.model_hash}


def fit_frames(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 (N, H, W, 3) resized (antialiased bilinear) to ``size`` = (H', W'); unchanged when already that size."""
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 (N, H, W, 3) frames, got {frames.dtype} {frames.shape}")
    if tuple(frames.shape[1:3]) == tuple(size):
        return frames
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=tuple(size), mode="bilinear", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


# ====================================================================== this project's model
class LongVILAVideoLM(VideoLM):
    """This project's checkpoint: frames encoded one by one, so both levels; the LLM is a plain HF causal LM
    (MM-SP sharding works on it). Every computation is ``eval/runner.py``'s."""

    model_type = "longvila"
    levels = ("embedding", "frame")
    can_shard = True

    def __init__(self, ckpt: str | os.PathLike, lm: runner.LoadedModel | None = None):
        self.lm = lm if lm is not None else runner.load_model(ckpt)
        self.ckpt, self.model_hash = self.lm.ckpt, self.lm.model_hash
        side = self.lm.processor.settings.image_size
        self.input_size = (side, side)
        self.mesh = None

    @property
    def tokenizer(self):
        return self.lm.tokenizer

    @property
    def eos_ids(self) -> list[int]:
        return self.lm.eos_ids

    def prompt_text(self, question: str, num_frames: int | None) -> str:
        text = f"<video>\n{question}" if num_frames else question  # as LongVILAProcessor.build_prompt renders it
        return self.lm.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                     add_generation_prompt=True)

    @property
    def max_context(self) -> int | None:
        return None  # RoPE is rescaled (dynamic YaRN) past the trained length: memory is the only limit

    def visual_tokens(self, num_frames: int) -> int:
        return num_frames * self.lm.processor.settings.tokens_per_frame

    def visual(self, frames: np.ndarray, level: str = "frame"):
        frames = super().visual(frames, level)
        return runner.encode_frames(self.lm, frames) if level == "embedding" else frames

    def cached_visual(self, cache_dir, key, num_frames, frames_fn, level, exact=True, path=None):
        if level != "embedding":
            return super().cached_visual(cache_dir, key, num_frames, frames_fn, level, exact)
        return runner.cached_embeddings(self.lm, cache_dir, key, num_frames,
                                        lambda: fit_frames(frames_fn(), self.input_size), exact=exact)

    def _tokens(self, visual) -> torch.Tensor | None:
        """Per-frame tokens (N, T, D) of a row at either level."""
        if visual is None or isinstance(visual, torch.Tensor):
            return visual
        return runner.encode_frames(self.lm, visual)

    def shard(self, mesh) -> None:
        from longvila.parallel.hf import apply_sequence_parallel

        apply_sequence_parallel(self.lm.model.language_model, mesh)
        self.mesh = mesh

    def teacher_forced(self, question, rows, answers, shared_frames=None):
        lm = self.lm
        n_vis = None if rows[0] is None else len(rows[0])
        prompt = runner.prompt_ids(lm, question, n_vis)
        ids = torch.cat([prompt.expand(len(rows), -1), answers], dim=1)  # (B, L)
        embeds = torch.cat([runner.embed(lm, ids[b:b + 1], self._tokens(v)) for b, v in enumerate(rows)])
        k = answers.shape[1]
        if self.mesh is not None:
            return self._sp_argmax(embeds, answers)
        # rows are equal up to the first visual token of frame ``shared_frames`` (None: up to the answer)
        if shared_frames is None or n_vis is None:
            shared = prompt.shape[0]
        else:
            slots = (ids[0] == lm.model.config.image_token_id).nonzero().flatten()
            shared = int(slots[shared_frames * lm.processor.settings.tokens_per_frame])
        shared = min(shared, prompt.shape[0] - 1)  # the last prompt position predicts the first answer token
        return runner.teacher_forced_argmax_shared(lm, embeds[:1, :shared], embeds[:, shared:], k)

    def _sp_argmax(self, embeds: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        from longvila.model.rope import rope_for_length
        from longvila.parallel.inference import sp_score

        k, length = answers.shape[1], embeds.shape[1]
        full = torch.full(embeds.shape[:2], -100, dtype=torch.long, device=embeds.device)
        full[:, length - k - 1:length - 1] = answers.to(embeds.device)  # target[t] = the token after position t
        llm = self.lm.model.language_model
        with rope_for_length(llm, length):  # every rank: the same table for the whole length
            argmax = sp_score(llm, embeds, full, self.mesh)["argmax"]
        return argmax[:, length - k - 1:length - 1].cpu()

    def generate(self, question, visual, max_new_tokens=8):
        vis = self._tokens(visual)
        ids = runner.prompt_ids(self.lm, question, None if vis is None else vis.shape[0])
        return runner.generate(self.lm, runner.embed(self.lm, ids[None], vis), max_new_tokens)

    def option_logprobs(self, question, visual, options):
        vis = self._tokens(visual)
        ids = runner.prompt_ids(self.lm, question, None if vis is None else vis.shape[0])
        return [float(x) for x in runner.option_logprobs(self.lm, runner.embed(self.lm, ids[None], vis), options)]


# ====================================================================== Hugging Face video LLMs
class HFVideoLM(VideoLM):
    """A Hugging Face video LLM (``AutoModelForImageTextToText`` + ``AutoProcessor``) at frame level."""

    def __init__(self, ckpt: str | os.PathLike, model_type: str, dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.model_type = model_type
        self.ckpt = Path(ckpt)
        self.model_hash = runner.model_hash(self.ckpt)
        self.processor = AutoProcessor.from_pretrained(str(self.ckpt))
        self.device = torch.device(device) if device is not None else runner.eval_device()
        self.model = AutoModelForImageTextToText.from_pretrained(str(self.ckpt), dtype=dtype).eval().to(self.device)
        if self.processor.chat_template is None and getattr(self.processor.tokenizer, "chat_template", None) is None:
            raise ValueError(f"{self.ckpt}: the processor has no chat template (chat_template.jinja)")
        self.input_size = _processor_input_size(self.processor)
        cfg = self.model.config
        self._video_token = getattr(cfg, "video_token_id", None)
        if self._video_token is None:
            self._video_token = cfg.video_token_index
        self._tokens_cache: dict[int, int] = {}

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def eos_ids(self) -> list[int]:
        tok = self.tokenizer
        ids = [tok.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")] + [tok.eos_token_id]
        eos = self.model.generation_config.eos_token_id
        ids += eos if isinstance(eos, list) else [eos]
        unk = tok.unk_token_id
        return list(dict.fromkeys(i for i in ids if isinstance(i, int) and i >= 0 and i != unk))

    def _messages(self, question: str, with_video: bool) -> list[dict]:
        content = ([{"type": "video"}] if with_video else []) + [{"type": "text", "text": question}]
        return [{"role": "user", "content": content}]

    def prompt_text(self, question: str, num_frames: int | None) -> str:
        return self.processor.apply_chat_template(self._messages(question, bool(num_frames)), tokenize=False,
                                                  add_generation_prompt=True)

    @property
    def max_context(self) -> int | None:
        return int(self.model.config.get_text_config().max_position_embeddings)

    def _measured_tokens(self, num_frames: int) -> int:
        """Video tokens the processor makes of ``num_frames`` blank frames (counted, not computed)."""
        if num_frames not in self._tokens_cache:
            h, w = self.input_size
            inputs = self._inputs("", np.zeros((num_frames, h, w, 3), np.uint8))
            self._tokens_cache[num_frames] = int((inputs["input_ids"] == self._video_token).sum())
        return self._tokens_cache[num_frames]

    def visual_tokens(self, num_frames: int) -> int:
        """Affine in the frame count, per frame or per temporal patch of two frames (Qwen2-VL pads an odd count
        with its last frame): read off the processor at 1, 2 and 4 frames."""
        if num_frames <= 4:
            return self._measured_tokens(num_frames)
        t1, t2, t4 = (self._measured_tokens(n) for n in (1, 2, 4))
        if t1 == t2:  # two frames per temporal patch
            return t2 + (t4 - t2) * (-(-num_frames // 2) - 1)
        return t1 + (t4 - t2) // 2 * (num_frames - 1)

    def _inputs(self, question: str, frames: np.ndarray | None, answer: list[int] | None = None) -> dict:
        """The processor's own model inputs (batch 1) for the prompt, with ``answer`` ids appended."""
        text = self.prompt_text(question, None if frames is None else len(frames))
        kwargs = {}
        if frames is not None:
            kwargs["videos"] = [fit_frames(frames, self.input_size)]
            if hasattr(self.processor.video_processor, "do_sample_frames"):
                kwargs["do_sample_frames"] = False  # the evaluation has sampled the frames
        inputs = dict(self.processor(text=[text], return_tensors="pt", **kwargs))
        if answer:
            n = len(answer)
            extend = {"input_ids": torch.tensor([answer]), "attention_mask": torch.ones(1, n, dtype=torch.long),
                      "mm_token_type_ids": torch.zeros(1, n, dtype=torch.long)}
            for key, tail in extend.items():
                if key in inputs:
                    inputs[key] = torch.cat([inputs[key], tail.to(inputs[key].dtype)], dim=1)
        return self.to_device(inputs)

    def to_device(self, inputs: dict) -> dict:
        """Processor outputs on the model's device; pixel values in the model's dtype (ids and grids stay integers)."""
        dtype = self.model.dtype
        return {k: v.to(self.device, dtype if v.is_floating_point() else None) if isinstance(v, torch.Tensor) else v
                for k, v in inputs.items()}

    @torch.inference_mode()
    def logits(self, question: str, frames: np.ndarray | None, answer: list[int] | None = None,
               keep: int = 0) -> torch.Tensor:
        """The model's own forward on the processor's inputs -> logits (1, keep or L, V)."""
        return self.model(**self._inputs(question, frames, answer), logits_to_keep=keep, use_cache=False).logits

    def teacher_forced(self, question, rows, answers, shared_frames=None):
        k = answers.shape[1]
        out = [self.logits(question, v, answers[b].tolist(), keep=k + 1)[0, :k].argmax(-1) for b, v in enumerate(rows)]
        return torch.stack(out).cpu()

    @torch.inference_mode()
    def generate(self, question, visual, max_new_tokens=8):
        inputs = self._inputs(question, visual)
        eos = self.eos_ids
        out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=eos,
                                  pad_token_id=self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None
                                  else (eos[0] if eos else None))
        return self.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:].tolist(), skip_special_tokens=True).strip()

    def option_logprobs(self, question, visual, options):
        if not options or any(len(o) == 0 for o in options):
            raise ValueError("option_logprobs needs non-empty options")
        out = []
        for o in options:  # logits at the positions predicting each option token
            logp = torch.log_softmax(self.logits(question, visual, o, keep=len(o) + 1)[0, :len(o)].double(), -1)
            out.append(float(logp.gather(-1, torch.tensor(o, device=logp.device)[:, None]).sum()))
        return out


def _processor_input_size(processor) -> tuple[int, int]:
    """(H, W) of the frames a processor's video path produces (the needle cards are rendered at it)."""
    vp = getattr(processor, "video_processor", None) or processor.image_processor
    size = dict(getattr(vp, "size", None) or {})
    crop = dict(getattr(vp, "crop_size", None) or {})
    if getattr(vp, "do_center_crop", False) and "height" in crop:
        return int(crop["height"]), int(crop["width"])
    if "height" in size:
        return int(size["height"]), int(size["width"])
    if "shortest_edge" in size and "longest_edge" not in size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    # Qwen2-VL: a pixel budget; the largest square within it on the (patch x merge) grid, at most 448
    unit = int(getattr(vp, "patch_size", 14)) * int(getattr(vp, "merge_size", 2))
    pixels = int(getattr(vp, "max_pixels", None) or size.get("longest_edge") or 448 * 448)
    side = max(unit, min(448, int(pixels ** 0.5)) // unit * unit)
    return side, side


# ====================================================================== loading
def checkpoint_model_type(ckpt: str | os.PathLike) -> str:
    """The ``model_type`` a checkpoint's config.json names."""
    cfg = Path(ckpt) / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{Path(ckpt)}: not a checkpoint folder (no config.json)")
    try:
        mt = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg}: not valid JSON ({e})") from None
    if not isinstance(mt, str):
        raise ValueError(f"{cfg}: no 'model_type' field")
    return mt


def as_video_lm(lm: VideoLM | runner.LoadedModel) -> VideoLM:
    """An adapter for ``lm``: a loaded checkpoint of this project (``runner.LoadedModel``) is wrapped."""
    return LongVILAVideoLM(lm.ckpt, lm=lm) if isinstance(lm, runner.LoadedModel) else lm


def load_adapter(model_type: str, ckpt: str | os.PathLike) -> VideoLM:
    """The adapter ``model_type`` (one of ``MODEL_TYPES`` or ``auto``) on checkpoint folder ``ckpt``.

    An unknown type lists the known ones; a checkpoint whose config names another model type is refused
    with both names."""
    if model_type != "auto" and model_type not in MODEL_TYPES:
        raise ValueError(f"unknown model type {model_type!r}; known: {', '.join(MODEL_TYPES)} (or auto)")
    found = checkpoint_model_type(ckpt)
    if model_type == "auto":
        if found not in MODEL_TYPES:
            raise ValueError(f"{Path(ckpt) / 'config.json'}: model_type {found!r} has no adapter; known: "
                             f"{', '.join(MODEL_TYPES)}")
        model_type = found
    elif found != model_type:
        raise ValueError(f"{Path(ckpt) / 'config.json'}: the checkpoint is a {found!r} model, not {model_type!r} "
                         f"(use --model {found if found in MODEL_TYPES else 'auto'})")
    if model_type == "longvila":
        return LongVILAVideoLM(ckpt)
    return HFVideoLM(ckpt, model_type)
