"""The shipped tokenizer: digits one token each, special-token ids, deterministic rebuild."""

import pytest

from longvila.model import load_tokenizer, tiny_config
from longvila.model.tokenizer import SHIPPED_DIR, SPECIAL_TOKENS, build_tokenizer


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_digits_are_single_tokens(tok):
    for d in "0123456789":
        assert len(tok(d, add_special_tokens=False)["input_ids"]) == 1
    ids = tok("code 9081726354", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[-10:] == list("9081726354")


def test_special_token_ids_match_config(tok):
    cfg = tiny_config()
    assert tok.convert_tokens_to_ids("<image>") == cfg.image_token_id
    assert tok.convert_tokens_to_ids("<video>") == cfg.video_token_id
    assert tok.eos_token_id == tok.pad_token_id == cfg.text_config.eos_token_id == cfg.text_config.pad_token_id
    assert len(tok) == cfg.text_config.vocab_size
    for tid, t in enumerate(SPECIAL_TOKENS):
        assert tok.convert_tokens_to_ids(t) == tid
        assert tok(t, add_special_tokens=False)["input_ids"] == [tid]


def test_round_trip_text(tok):
    text = "A small red circle moves left at the top right. The answer is B; the code is 0427."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.slow
def test_rebuild_is_deterministic(tmp_path):
    build_tokenizer(tmp_path)
    shipped = sorted(p.name for p in SHIPPED_DIR.iterdir() if p.is_file())
    assert sorted(p.name for p in tmp_path.iterdir()) == shipped
    for name in shipped:
        assert (tmp_path / name).read_bytes() == (SHIPPED_DIR / name).read_bytes(), name
