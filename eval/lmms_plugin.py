"""lmms-eval plugin: ``python -m lmms_eval --model longvila_e2e --model_args pretrained=PATH,num_frames=N``.

The model registers through the ``lmms_eval.models`` entry point (pyproject.toml), which names
:func:`manifest`: lmms-eval 0.7 loads an entry point and, when it is callable, calls it with no arguments
and expects a ``ModelManifest`` (or a list of them). The manifest names a simple class (:class:`LongVILALmms`)
and a chat class (:class:`LongVILAChatLmms`) under ``MODEL_ID`` = ``longvila_e2e``, a name none of
lmms-eval's built-in models uses (its own ``longvila`` is NVIDIA's LongVILA adapter and stays theirs; a test
checks that no built-in name is shadowed).

Design choices:
- Both classes share one answer path (``_respond``): read the request's videos (uniform ``num_frames``
  frames, ``videomme.read_video_frames``; still images count as one frame), encode them, wrap the task's
  text with the processor's chat prompt and generate greedily (``runner.generate``).
- ``loglikelihood`` scores the continuation after the same chat prompt, reusing the prompt's key/value cache
  (``runner.option_logprobs``), and returns (mean negative log-likelihood per continuation token,
  is_greedy). That is the convention lmms-eval's models follow (they return the LM loss) and the one its
  ``multiple_choice`` scorer expects: it takes the choice with the *lowest* value. The local task
  ``longvila_videomme_ll`` scores the embedded benchmark that way. Multi-round generation raises
  NotImplementedError.
- The local task for the embedded benchmark is in ``eval/tasks/longvila_videomme`` (``--include_path``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from lmms_eval.api.model import lmms

from longvila.eval import runner
from longvila.utils import progress

TASKS_DIR = Path(__file__).resolve().parent / "tasks"


MODEL_ID = "longvila_e2e"


def manifest():
    """The lmms-eval registration: model id ``MODEL_ID`` -> our simple and chat classes."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.LongVILALmms",
                         chat_class_path=f"{__name__}.LongVILAChatLmms")


class LongVILALmms(lmms):
    """A LongVILA checkpoint as an lmms-eval simple model (requests carry ``doc_to_visual``)."""

    def __init__(self, pretrained: str | None = None, num_frames: int | str = 8, max_new_tokens: int | str = 16,
                 batch_size: int | str = 1, device: str = "cpu", **kwargs) -> None:
        super().__init__()
        if not pretrained:
            raise ValueError(f"{MODEL_ID}: model_args must give pretrained=<checkpoint folder>")
        self.lm = runner.load_model(pretrained)
        self.num_frames = int(num_frames)
        if self.num_frames < 1:
            raise ValueError(f"{MODEL_ID}: num_frames must be >= 1, got {num_frames}")
        self.max_new_tokens = int(max_new_tokens)
        self.batch_size = int(batch_size)
        self.unused_args = kwargs  # e.g. lmms-eval's own device/dtype hints

    # ----------------------------------------------------------------- the shared answer path
    def _frames(self, visuals: list) -> np.ndarray | None:
        from longvila.eval.videomme import read_video_frames

        clips = []
        for v in visuals:
            if isinstance(v, dict):
                v = v.get("url") or v.get("path")
            if isinstance(v, str):
                clips.append(read_video_frames(v, self.num_frames, allow_fewer=True))
            elif hasattr(v, "convert"):  # a PIL image: one frame
                clips.append(np.asarray(v.convert("RGB"))[None])
            elif v is not None:
                raise TypeError(f"{MODEL_ID}: unsupported visual {type(v).__name__}")
        if not clips:
            return None
        shapes = {c.shape[1:] for c in clips}
        if len(shapes) > 1:
            from skimage.transform import resize

            h, w = clips[0].shape[1:3]
            clips = [c if c.shape[1:3] == (h, w) else
                     (np.stack([resize(f, (h, w), preserve_range=True) for f in c]).round().astype(np.uint8))
                     for c in clips]
        return np.concatenate(clips)

    def _prompt_embeds(self, visuals: list, text: str) -> torch.Tensor:
        """The chat prompt for ``text`` after the request's visuals, embedded: (1, L, D)."""
        frames = self._frames(visuals)
        visual = None if frames is None else runner.encode_frames(self.lm, frames)
        ids = runner.prompt_ids(self.lm, text, None if visual is None else visual.shape[0])
        return runner.embed(self.lm, ids[None], visual)

    def _respond(self, visuals: list, text: str, gen_kwargs: dict) -> str:
        max_new = int((gen_kwargs or {}).get("max_new_tokens", self.max_new_tokens))
        reply = runner.generate(self.lm, self._prompt_embeds(visuals, text), max_new)
        until = (gen_kwargs or {}).get("until") or []
        for stop in [until] if isinstance(until, str) else until:
            if stop:
                reply = reply.split(stop)[0]
        return reply.strip()

    @torch.inference_mode()
    def generate_until(self, requests) -> list[str]:
        out = []
        for req in progress(requests, desc="longvila generate", unit="req"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            visuals = doc_to_visual(self.task_dict[task][split][doc_id]) or []
            out.append(self._respond(visuals if isinstance(visuals, list) else [visuals], context, gen_kwargs))
        return out

    @torch.inference_mode()
    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out, last = [], (None, None)  # a multiple-choice doc sends one request per option: read its video once
        for req in progress(requests, desc="longvila loglikelihood", unit="req"):
            context, doc_to_target, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            target = doc_to_target(doc) if callable(doc_to_target) else doc_to_target
            cont = runner.answer_ids(self.lm, str(target))
            if not cont:
                raise ValueError(f"{MODEL_ID}: empty continuation for {task}/{split} doc {doc_id}")
            key = (task, split, doc_id, context)
            if last[0] != key:
                visuals = doc_to_visual(doc) or []
                last = (key, self._prompt_embeds(visuals if isinstance(visuals, list) else [visuals], context))
            lp, greedy = runner.option_logprobs(self.lm, last[1], [cont], return_greedy=True)
            out.append((-float(lp[0]) / len(cont), bool(greedy[0])))
        return out

    def generate_until_multi_round(self, requests):
        raise NotImplementedError(f"{MODEL_ID}: multi-round generation is not implemented")


class LongVILAChatLmms(LongVILALmms):
    """The same model for lmms-eval's chat path (requests carry ``doc_to_messages``)."""

    is_simple = False

    @torch.inference_mode()
    def generate_until(self, requests) -> list[str]:
        out = []
        for req in progress(requests, desc="longvila generate", unit="req"):
            _ctx, doc_to_messages, gen_kwargs, doc_id, task, split = req.args
            messages = doc_to_messages(self.task_dict[task][split][doc_id])
            visuals, texts = [], []
            for m in messages:
                content = m["content"]
                for part in [{"type": "text", "text": content}] if isinstance(content, str) else content:
                    if part["type"] == "text":
                        texts.append(part["text"])
                    elif part["type"] in ("video", "image"):
                        visuals.append(part["url"])
            out.append(self._respond(visuals, "\n".join(texts), gen_kwargs))
        return out
