"""Any lmms-eval model in the VideoMME frame sweep: ``longvila eval videomme --lmms-model NAME --lmms-model-args ...``.

lmms-eval ships about 150 model adapters. ``LmmsVideoLM`` wraps one of them as a ``VideoLM`` that answers by
generation, so the sweep (frame counts x questions, blind baseline, letters, per-duration tables, the result
file) runs on models this project has no adapter for.

Design choices:
- The lmms-eval model reads the video file itself, with its own sampling, as it does inside lmms-eval; the
  sweep sets its frame count before each frame count's pass through the model's frame-count attribute
  (``FRAME_ARGS`` for the adapters whose name is known, else ``--lmms-frames-arg``). A model without that
  attribute is refused, never run at a frame count it ignores.
- Requests are lmms-eval ``Instance``s of the simple request form (context, gen_kwargs, doc_to_visual, doc_id,
  task, split), through the model's simple class (``force_simple``); a model with a chat class only gets the
  chat form (context, doc_to_messages, gen_kwargs, ...).
- Option likelihood is not asked of bridged models (many lmms-eval adapters raise NotImplementedError for
  ``loglikelihood``); the sweep reports the letter protocol only.
- A reply the model could not produce (lmms-eval adapters often catch their own errors and return ``""``;
  llava_hf does so for the blind, text-only questions) still scores as wrong, and the sweep counts empty
  replies per frame count (``empty_replies``, a warning on the command line) so a broken model shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from longvila.eval.adapters import VideoLM

# the attribute that holds the frame count, for lmms-eval adapters that read video files
FRAME_ARGS = {"llava_hf": "max_frames_num", "llava_onevision": "max_frames_num", "llava_vid": "max_frames_num",
              "qwen2_vl": "max_num_frames", "qwen2_5_vl": "max_num_frames", "qwen3_vl": "max_num_frames",
              "longva": "max_frames_num", "internvl2": "num_frame", "vila": "max_frames_num"}
TASK, SPLIT = "longvila_bridge", "test"


@dataclass(frozen=True)
class VideoFile:
    """A row's video for a bridged model: the file and the frame count it is asked at."""

    path: Path
    num_frames: int

    def __len__(self) -> int:
        return self.num_frames


class LmmsVideoLM(VideoLM):
    """An lmms-eval model (``--model NAME --model_args ARGS`` as lmms-eval takes them) behind ``VideoLM``."""

    levels = ("file",)
    has_likelihood = False

    def __init__(self, name: str, model_args: str = "", frames_arg: str | None = None):
        from lmms_eval.models import get_model

        try:
            cls = get_model(name, force_simple=True)
        except Exception as e:  # noqa: BLE001 - lmms-eval raises several types for an unknown name
            raise ValueError(f"lmms-eval has no model {name!r} ({type(e).__name__}: {e})") from None
        self.model_type = f"lmms:{name}"
        given = dict(kv.split("=", 1) for kv in model_args.split(",") if "=" in kv)
        defaults = {k: v for k, v in {"batch_size": 1, "device": "cpu"}.items() if k not in given}
        self.lmm = cls.create_from_arg_string(model_args, defaults)
        self.frames_arg = frames_arg or FRAME_ARGS.get(name)
        if not self.frames_arg or not hasattr(self.lmm, self.frames_arg):
            raise ValueError(f"lmms-eval model {name!r}: no frame-count attribute "
                             f"{self.frames_arg!r}; name it with --lmms-frames-arg")
        self.simple = getattr(self.lmm, "is_simple", True)
        pretrained = given.get("pretrained", "")
        self.ckpt = Path(pretrained) if pretrained else Path(name)
        self.model_hash = _hash_or_name(self.ckpt, model_args)

    # the sweep's side of VideoLM
    @property
    def tokenizer(self):
        raise NotImplementedError("a bridged lmms-eval model is asked by generation only")

    @property
    def eos_ids(self) -> list[int]:
        return []

    def prompt_text(self, question, num_frames):
        return question  # the lmms-eval model wraps it in its own template

    @property
    def max_context(self):
        return None  # the lmms-eval model enforces its own

    def visual_tokens(self, num_frames):
        raise NotImplementedError("a bridged lmms-eval model does not expose its visual token count")

    def cached_visual(self, cache_dir, key, num_frames, frames_fn, level, exact=True, path=None):
        if path is None:
            raise ValueError("a bridged lmms-eval model reads video files: give the video's path")
        return VideoFile(Path(path), num_frames), False

    def teacher_forced(self, question, rows, answers, shared_frames=None):
        raise NotImplementedError("a bridged lmms-eval model is asked by generation only")

    def option_logprobs(self, question, visual, options):
        raise NotImplementedError("a bridged lmms-eval model is asked by generation only")

    def generate(self, question: str, visual, max_new_tokens: int = 8) -> str:
        from lmms_eval.api.instance import Instance

        visuals = [] if visual is None else [str(visual.path)]
        if visual is not None:
            setattr(self.lmm, self.frames_arg, int(visual.num_frames))
        doc = {"question": question}
        self.lmm.task_dict = {TASK: {SPLIT: [doc]}}
        gen = {"max_new_tokens": max_new_tokens, "temperature": 0, "do_sample": False, "until": ["\n\n"]}
        if self.simple:
            args = (question, gen, lambda d: visuals, 0, TASK, SPLIT)
        else:
            content = [{"type": "video", "url": v} for v in visuals] + [{"type": "text", "text": question}]
            args = (question, lambda d: [{"role": "user", "content": content}], gen, 0, TASK, SPLIT)
        req = Instance(request_type="generate_until", arguments=args, idx=0,
                       metadata={"task": TASK, "doc_id": 0, "repeats": 1})
        reply = self.lmm.generate_until([req])[0]
        return str(getattr(reply, "text", reply)).strip()  # GenerationResult or str


def _hash_or_name(ckpt: Path, model_args: str) -> str:
    from longvila.eval import runner

    try:
        return runner.model_hash(ckpt)
    except FileNotFoundError:
        import hashlib

        return hashlib.sha256(model_args.encode()).hexdigest()[:16]
