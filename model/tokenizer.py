"""The project's tokenizer: a byte-level BPE trained on the synthetic world's text, shipped in the repo.

Design choices:
- Byte-level BPE (``tokenizers``), so any text encodes, while the world's words (``longvila.data.vocab``)
  are a few tokens each. The trainer asks for ~2,000 tokens; it stops earlier when the corpus has no more
  pairs to merge (the real size is ``len(tokenizer)``, written into ``tiny_config()``).
- Digits are split one by one before BPE (``Digits(individual_digits=True)``): every digit is exactly one
  token, so a k-digit answer is k tokens (the needle evaluation scores digit by digit).
- The five special tokens take ids 0-4 in a fixed order (``SPECIAL_TOKENS``); the model config's
  ``image_token_id`` and ``eos/pad`` ids point at them.
- Chat template in the Qwen2 style (``<|im_start|>role\\n...<|im_end|>\\n``), without a default system
  prompt: every token of context counts on 2 CPU cores.
- The shipped files (``model/tokenizer/``) are the source of truth at run time; ``build_tokenizer`` rebuilds
  them deterministically (``longvila model build-tokenizer``), and a test rebuilds into a temporary folder
  and compares byte for byte.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SHIPPED_DIR = Path(__file__).resolve().parent / "tokenizer"

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
IMAGE_TOKEN = "<image>"
VIDEO_TOKEN = "<video>"
SPECIAL_TOKENS = [EOS_TOKEN, IM_START, IM_END, IMAGE_TOKEN, VIDEO_TOKEN]
# Fixed ids (the BPE trainer puts special tokens first, in this order).
EOS_TOKEN_ID, IM_START_ID, IM_END_ID, IMAGE_TOKEN_ID, VIDEO_TOKEN_ID = range(5)

TARGET_VOCAB_SIZE = 2000

# Qwen2-style chat template (no default system message). LLaVA-style "from" keys are accepted too.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- set role = message['role'] if 'role' in message else "
    "({'human': 'user', 'gpt': 'assistant', 'system': 'system'}[message['from']]) -%}"
    "{%- set content = message['content'] if 'content' in message else message['value'] -%}"
    "{{ '<|im_start|>' + role + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _train_backend(num_lines: int = 20000, seed: int = 0):
    """Train the BPE model on ``tokenizer_corpus`` and return a ``tokenizers.Tokenizer``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from longvila.data.vocab import tokenizer_corpus

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TARGET_VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(tokenizer_corpus(num_lines=num_lines, seed=seed))
    # Answers start a line (right after "assistant\n"), without a leading space: the world's words (the
    # corpus' first line) are also given one per line. The chat roles are not world words; a few lines of
    # them make each role header one token.
    line_starts = ["\n".join(corpus[0].split(" "))] * 3
    roles = ["user\nassistant\nsystem\n"] * 50
    tok.train_from_iterator([*corpus, *line_starts, *roles], trainer=trainer)
    return tok


def build_tokenizer(out_dir: str | os.PathLike = SHIPPED_DIR):
    """Train the tokenizer and save it (``tokenizer.json``, ``tokenizer_config.json``, chat template).

    Deterministic: the same corpus gives the same files. Returns the ``PreTrainedTokenizerFast``.
    """
    from transformers import PreTrainedTokenizerFast

    backend = _train_backend()
    for tid, tok in enumerate(SPECIAL_TOKENS):
        if backend.token_to_id(tok) != tid:
            raise RuntimeError(f"special token {tok!r} got id {backend.token_to_id(tok)}, expected {tid}")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        additional_special_tokens=[IM_START, IM_END, IMAGE_TOKEN, VIDEO_TOKEN],
        model_max_length=1 << 30,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / ".build"
    tokenizer.save_pretrained(tmp)
    # Move the files in one by one with atomic renames; drop fields that vary between runs.
    for f in sorted(tmp.iterdir()):
        if f.name == "tokenizer_config.json":
            cfg = json.loads(f.read_text())
            cfg.pop("name_or_path", None)
            from longvila.utils import atomic_write_json

            atomic_write_json(out_dir / f.name, cfg)
            os.chmod(out_dir / f.name, 0o644)
            f.unlink()
        else:
            os.replace(f, out_dir / f.name)
    tmp.rmdir()
    return tokenizer


def load_tokenizer(path: str | os.PathLike | None = None):
    """The shipped tokenizer (or one saved at ``path``) as a ``PreTrainedTokenizerFast``."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path) if path is not None else SHIPPED_DIR
    if not (path / "tokenizer.json").is_file():
        hint = " (run `longvila model build-tokenizer`)" if path == SHIPPED_DIR else ""
        raise FileNotFoundError(f"{path / 'tokenizer.json'}: no tokenizer here{hint}")
    tok = AutoTokenizer.from_pretrained(str(path))
    if not isinstance(tok, PreTrainedTokenizerFast):  # pragma: no cover - defensive
        raise TypeError(f"{path}: expected a fast tokenizer, got {type(tok).__name__}")
    return tok
