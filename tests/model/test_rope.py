"""Dynamic YaRN (model/rope.py): off within the trained length, transformers' YaRN past it, one table for a
cached prefix and its continuation, restored afterwards, and refused on a model with another RoPE scaling."""

import math
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, Qwen2Config

from longvila.model.rope import DYNAMIC_YARN_KEY, rope_for_length, yarn_factor

T = 16  # positions the test models "trained" on


def _qwen2(**kw) -> Qwen2Config:
    return Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       rope_parameters={"rope_type": "default", "rope_theta": 1e4}, **kw)


@pytest.fixture(scope="module")
def llm():
    torch.manual_seed(0)
    cfg = _qwen2()
    setattr(cfg, DYNAMIC_YARN_KEY, T)
    return AutoModelForCausalLM.from_config(cfg).eval()


def test_factor_is_length_over_trained_length_past_it():
    cfg = _qwen2()
    assert yarn_factor(cfg, 10_000) == 1.0  # off: no trained length in the config
    setattr(cfg, DYNAMIC_YARN_KEY, 1536)
    assert yarn_factor(cfg, 1536) == 1.0 and yarn_factor(cfg, 100) == 1.0
    assert yarn_factor(cfg, 6144) == pytest.approx(4.0)


def test_within_the_trained_length_nothing_changes(llm):
    rot = llm.model.rotary_emb
    before = rot.inv_freq
    with rope_for_length(llm, T) as f:
        assert f == 1.0 and rot.inv_freq is before


def test_past_it_the_model_computes_as_a_yarn_model_of_that_factor(llm):
    """Logits under rope_for_length(L) equal those of the same weights configured with static YaRN, factor L/T."""
    length = 3 * T
    ids = torch.randint(0, 64, (2, length), generator=torch.Generator().manual_seed(1))
    cfg = _qwen2()
    cfg.rope_parameters = {"rope_type": "yarn", "rope_theta": 1e4, "factor": length / T,
                           "original_max_position_embeddings": T}
    yarn = AutoModelForCausalLM.from_config(cfg).eval()
    yarn.load_state_dict(llm.state_dict())
    with torch.no_grad():
        plain = llm(input_ids=ids).logits
        with rope_for_length(llm, length) as f:
            scaled = llm(input_ids=ids).logits
        want = yarn(input_ids=ids).logits
        after = llm(input_ids=ids).logits
    assert f == pytest.approx(3.0)
    torch.testing.assert_close(scaled, want, atol=1e-5, rtol=1e-5)
    assert (scaled - plain).abs().max() > 1e-4  # the scaling does change a long input
    torch.testing.assert_close(after, plain, atol=0, rtol=0)  # and the trained table is back afterwards


def test_cached_prefix_and_continuation_share_one_table(llm):
    """Teacher forcing with a shared prefix (cache, then the suffix) equals one full forward, under scaling."""
    from types import SimpleNamespace

    from longvila.eval import runner

    length = 4 * T
    embeds = llm.get_input_embeddings()(torch.randint(0, 64, (3, length), generator=torch.Generator().manual_seed(2)))
    embeds[1:, :20] = embeds[0, :20]  # the rows share their first 20 positions
    lm = SimpleNamespace(model=SimpleNamespace(language_model=llm))
    with torch.no_grad():
        full = runner.teacher_forced_argmax(lm, embeds, 5)
        shared = runner.teacher_forced_argmax_shared(lm, embeds[:1, :20], embeds[:, 20:], 5)
        with rope_for_length(llm, length):
            want = llm(inputs_embeds=embeds).logits[:, -6:-1].argmax(-1)
    assert torch.equal(full, want) and torch.equal(shared, want)


def test_restored_after_an_error_and_refused_on_other_scalings(llm):
    rot = llm.model.rotary_emb
    before = rot.inv_freq.clone()
    with pytest.raises(RuntimeError, match="boom"), rope_for_length(llm, 5 * T):
        raise RuntimeError("boom")
    assert torch.equal(rot.inv_freq, before)
    cfg = _qwen2()
    cfg.rope_parameters = {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}
    setattr(cfg, DYNAMIC_YARN_KEY, T)
    other = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(ValueError, match="rope_type is 'linear'"), rope_for_length(other, 5 * T):
        pass


def test_with_logn_scaling_yarn_leaves_out_its_logit_temperature():
    """A model that already scales logits by log-n gets YaRN's frequencies without its (0.1 ln s + 1) factor."""
    from longvila.parallel.hf import LOGN_KEY

    def table(logn: bool):
        cfg = _qwen2()
        setattr(cfg, DYNAMIC_YARN_KEY, T)
        if logn:
            setattr(cfg, LOGN_KEY, 8)
        rot = AutoModelForCausalLM.from_config(cfg).model.rotary_emb
        with rope_for_length(SimpleNamespace(config=cfg, get_decoder=lambda: SimpleNamespace(rotary_emb=rot)),
                             4 * T):
            return rot.inv_freq.clone(), rot.attention_scaling

    (f_plain, s_plain), (f_logn, s_logn) = table(False), table(True)
    assert s_plain == pytest.approx(0.1 * math.log(4) + 1) and s_logn == 1.0
    torch.testing.assert_close(f_logn, f_plain, atol=0, rtol=0)
