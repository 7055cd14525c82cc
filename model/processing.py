"""LongVILAProcessor: frames -> pixel values, conversations -> (input_ids, labels) with expanded placeholders.

Design choices:
- Placeholders are expanded at the id level here, before the model runs: each ``<video>`` with n frames
  becomes n x tokens_per_frame ``<image>`` ids, each ``<image>`` (a still) tokens_per_frame ``<image>`` ids.
  So the sequence length, positions and labels are fixed before the vision tower runs (MM-SP shards them).
- A conversation is encoded turn by turn from the same strings the chat template renders
  (``<|im_start|>role\\n`` + text + ``<|im_end|>`` + ``\\n``); the turn boundaries are where BPE pre-tokenisation
  splits anyway, so the ids equal the tokenised template text (a test checks it), and each token's turn is
  known without offset bookkeeping.
- Labels: the ids of assistant text and its ``<|im_end|>``; -100 for everything else (system/user turns,
  role headers, the newline after ``<|im_end|>``, visual placeholders). The shift happens in the loss.
- Frames are resized with antialiased bilinear interpolation to image_size and normalised with the
  config's mean/std (SigLIP: 0.5/0.5, i.e. [-1, 1]).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .tokenizer import IM_END, IM_START, load_tokenizer

IGNORE_INDEX = -100
PROCESSOR_FILE = "processor_config.json"
ROLES = {"human": "user", "gpt": "assistant", "system": "system", "user": "user", "assistant": "assistant"}


@dataclass
class ProcessorSettings:
    image_size: int
    tokens_per_frame: int
    image_token_id: int
    video_token_id: int
    image_mean: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])
    image_std: list[float] = field(default_factory=lambda: [0.5, 0.5, 0.5])


class LongVILAProcessor:
    """Tokenizer + frame preprocessing + placeholder expansion + label masking (saved with the model)."""

    def __init__(self, tokenizer, settings: ProcessorSettings):
        self.tokenizer = tokenizer
        self.settings = settings
        for name in ("image_token_id", "video_token_id"):
            tok = "<image>" if name == "image_token_id" else "<video>"
            if tokenizer.convert_tokens_to_ids(tok) != getattr(settings, name):
                raise ValueError(
                    f"{name}: the config says {getattr(settings, name)} but the tokenizer maps {tok} to "
                    f"{tokenizer.convert_tokens_to_ids(tok)}"
                )
        self._im_end_id = tokenizer.convert_tokens_to_ids(IM_END)

    @classmethod
    def from_config(cls, config, tokenizer=None) -> LongVILAProcessor:
        """The processor for a ``LongVILAConfig`` (the shipped tokenizer unless one is given)."""
        settings = ProcessorSettings(
            image_size=config.image_size, tokens_per_frame=config.tokens_per_frame,
            image_token_id=config.image_token_id, video_token_id=config.video_token_id,
            image_mean=list(config.image_mean), image_std=list(config.image_std),
        )
        return cls(tokenizer if tokenizer is not None else load_tokenizer(), settings)

    # -- persistence -----------------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        from longvila.utils import atomic_write_json

        save_directory = Path(save_directory)
        self.tokenizer.save_pretrained(str(save_directory))
        atomic_write_json(save_directory / PROCESSOR_FILE, asdict(self.settings))

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> LongVILAProcessor:
        from longvila.utils import read_json

        path = Path(path)
        raw = read_json(path / PROCESSOR_FILE)
        try:
            settings = ProcessorSettings(**raw)
        except TypeError as e:
            raise ValueError(f"{path / PROCESSOR_FILE}: malformed processor settings ({e})") from None
        return cls(load_tokenizer(path), settings)

    # -- frames ----------------------------------------------------------------------------------------
    def preprocess_frames(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 frames (N, H, W, 3) -> float32 pixel values (N, 3, S, S), resized and normalised."""
        if not isinstance(frames, torch.Tensor):
            frames = np.asarray(frames)
            # NOTE: decoded frames may be read-only views; torch needs a writable buffer.
            frames = frames if frames.flags.writeable else frames.copy()
        x = torch.as_tensor(frames)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3 or 0 in x.shape:
            raise ValueError(f"frames: expected a non-empty uint8 array (N, H, W, 3), got {x.dtype} {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2).float().div_(255.0)
        s = self.settings.image_size
        if tuple(x.shape[2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", antialias=True, align_corners=False).clamp_(0, 1)
        mean = torch.tensor(self.settings.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.settings.image_std).view(1, 3, 1, 1)
        return (x - mean) / std

    # -- text ------------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _expand(self, ids: list[int], labels: list[int], num_frames: list[int]) -> tuple[list[int], list[int]]:
        s = self.settings
        slots = [i for i, t in enumerate(ids) if t in (s.image_token_id, s.video_token_id)]
        if len(slots) != len(num_frames):
            raise ValueError(
                f"num_frames: {len(slots)} <video>/<image> placeholders in the conversation but "
                f"{len(num_frames)} frame counts {list(num_frames)}"
            )
        out_ids: list[int] = []
        out_labels: list[int] = []
        prev = 0
        for slot, n in zip(slots, num_frames, strict=True):
            is_video = ids[slot] == s.video_token_id
            if not isinstance(n, (int, np.integer)) or n < 1 or (not is_video and n != 1):
                kind = "<video>" if is_video else "<image> (a still image counts 1)"
                raise ValueError(f"num_frames: invalid count {n!r} for a {kind} placeholder")
            out_ids += ids[prev:slot] + [s.image_token_id] * (int(n) * s.tokens_per_frame)
            out_labels += labels[prev:slot] + [IGNORE_INDEX] * (int(n) * s.tokens_per_frame)
            prev = slot + 1
        return out_ids + ids[prev:], out_labels + labels[prev:]

    def _encode_turns(self, turns: list[tuple[str, str]], add_generation_prompt: bool) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        labels: list[int] = []
        newline = self._ids("\n")
        for role, text in turns:
            head = self._ids(f"{IM_START}{role}\n")
            body = self._ids(text) + [self._im_end_id]
            ids += head + body + newline
            labels += [IGNORE_INDEX] * len(head)
            labels += body if role == "assistant" else [IGNORE_INDEX] * len(body)
            labels += [IGNORE_INDEX] * len(newline)
        if add_generation_prompt:
            head = self._ids(f"{IM_START}assistant\n")
            ids += head
            labels += [IGNORE_INDEX] * len(head)
        return ids, labels

    @staticmethod
    def _turns(conversations: list[dict[str, Any]]) -> list[tuple[str, str]]:
        if not isinstance(conversations, list) or not conversations:
            raise ValueError("conversations: expected a non-empty list of {'from', 'value'} turns")
        turns = []
        for i, turn in enumerate(conversations):
            if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
                raise ValueError(f"conversations[{i}]: expected a dict with 'from' and 'value', got {turn!r}")
            if turn["from"] not in ROLES:
                raise ValueError(f"conversations[{i}].from: unknown role {turn['from']!r}; known: {sorted(ROLES)}")
            if not isinstance(turn["value"], str):
                raise ValueError(f"conversations[{i}].value: expected a string")
            turns.append((ROLES[turn["from"]], turn["value"]))
        return turns

    def render(self, conversations: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
        """The chat-templated text of a conversation (placeholders not expanded)."""
        messages = [{"role": r, "content": t} for r, t in self._turns(conversations)]
        return self.tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)

    def encode_conversation(self, conversations: list[dict[str, Any]], num_frames: list[int]) -> dict[str, torch.Tensor]:
        """LLaVA-style turns -> {"input_ids": (L,), "labels": (L,)} (long tensors), placeholders expanded.

        ``num_frames`` has one entry per ``<video>``/``<image>`` placeholder, in order (1 for a still image).
        """
        ids, labels = self._encode_turns(self._turns(conversations), add_generation_prompt=False)
        ids, labels = self._expand(ids, labels, list(num_frames))
        return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}

    def encode_plain(self, prompt: str, answer: str, num_frames: list[int]) -> dict[str, torch.Tensor]:
        """``prompt`` then ``answer`` as plain text, without the chat template -> {"input_ids", "labels"}
        (placeholders expanded; the labels are the answer's tokens alone, no end-of-turn token)."""
        p, a = self._ids(prompt), self._ids(answer)
        ids, labels = self._expand(p + a, [IGNORE_INDEX] * len(p) + a, list(num_frames))
        return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}

    def build_prompt(self, question: str, num_frames: int | None) -> torch.Tensor:
        """A user turn (``<video>\\n`` + question when num_frames is given) and the assistant header -> ids (L,)."""
        text = question if num_frames is None else f"<video>\n{question}"
        ids, labels = self._encode_turns([("user", text)], add_generation_prompt=True)
        ids, _ = self._expand(ids, labels, [] if num_frames is None else [num_frames])
        return torch.tensor(ids, dtype=torch.long)

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
