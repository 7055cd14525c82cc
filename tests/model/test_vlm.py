"""The VLM: merge by index, placeholder errors, loss masking, save/load round trip, generate, attention."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from longvila.model import LongVILAForCausalLM, causal_lm_loss, tiny_config

IMG = tiny_config().image_token_id


def test_encode_frames_shape(tiny_model):
    visual = tiny_model.encode_frames(torch.randn(5, 3, 32, 32))
    assert visual.shape == (5, 1, 128)
    with pytest.raises(ValueError, match="pixel_values"):
        tiny_model.encode_frames(torch.randn(5, 3, 30, 30))


def test_merge_puts_each_frame_at_its_placeholder(tiny_model):
    ids = torch.tensor([[1, 10, IMG, 11, IMG, IMG, 12], [IMG, 13, 14, 15, 16, IMG, 2]])
    visual = torch.randn(5, 1, 128)
    emb = tiny_model.merge_visual_tokens(ids, visual)
    text = tiny_model.get_input_embeddings()(ids)
    slots = [(0, 2), (0, 4), (0, 5), (1, 0), (1, 5)]  # row-major order of the <image> ids
    for k, (b, i) in enumerate(slots):
        torch.testing.assert_close(emb[b, i], visual[k, 0], rtol=0, atol=0)
    keep = ids != IMG
    torch.testing.assert_close(emb[keep], text[keep], rtol=0, atol=0)


def test_merge_multi_token_frames_keep_order():
    torch.manual_seed(0)
    m = LongVILAForCausalLM(tiny_config(projector="linear")).eval()  # 4 tokens per frame
    ids = torch.tensor([[1] + [IMG] * 8 + [2]])
    visual = torch.randn(2, 4, 128)
    emb = m.merge_visual_tokens(ids, visual)
    torch.testing.assert_close(emb[0, 1:9], visual.reshape(8, 128), rtol=0, atol=0)


def test_placeholder_count_mismatch(tiny_model):
    ids = torch.tensor([[1, IMG, IMG, 2]])
    with pytest.raises(ValueError, match=r"2 <image> ids .* 3 frames x 1 tokens per frame = 3"):
        tiny_model.merge_visual_tokens(ids, torch.randn(3, 1, 128))
    with pytest.raises(ValueError, match="no pixel_values"):
        tiny_model(input_ids=ids)


def test_loss_only_on_labelled_tokens(tiny_model):
    ids = torch.tensor([[1, 10, IMG, 11, 12, 13, 2]])
    pv = torch.randn(1, 3, 32, 32)
    labels = torch.full_like(ids, -100)
    labels[0, 4:] = ids[0, 4:]
    out = tiny_model(input_ids=ids, pixel_values=pv, labels=labels)
    logp = out.logits[0].float().log_softmax(-1)
    want = -torch.stack([logp[t - 1, ids[0, t]] for t in range(4, 7)]).mean()
    torch.testing.assert_close(out.loss, want)
    # changing an unlabelled token's label does not change the loss
    assert causal_lm_loss(out.logits, labels).item() == pytest.approx(out.loss.item())


def test_gradients_reach_all_parts():
    torch.manual_seed(0)
    m = LongVILAForCausalLM(tiny_config())
    ids = torch.tensor([[1, IMG, 11, 12, 2]])
    out = m(input_ids=ids, pixel_values=torch.randn(1, 3, 32, 32), labels=ids)
    out.loss.backward()
    for part in (m.vision_tower, m.mm_projector, m.language_model):
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_save_load_round_trip(tiny_model, tmp_path):
    ids = torch.tensor([[1, 10, IMG, IMG, 11, 2]])
    pv = torch.randn(2, 3, 32, 32)
    want = tiny_model(input_ids=ids, pixel_values=pv).logits
    tiny_model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    back = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(back, LongVILAForCausalLM)
    torch.testing.assert_close(back(input_ids=ids, pixel_values=pv).logits, want, rtol=0, atol=0)
    # the LLM alone loads with plain transformers and gives the same logits on the merged embeddings
    llm = AutoModelForCausalLM.from_pretrained(tmp_path / "language_model")
    assert type(llm).__name__ == "Qwen2ForCausalLM"
    emb = tiny_model.merge_visual_tokens(ids, tiny_model.encode_frames(pv))
    torch.testing.assert_close(llm(inputs_embeds=emb).logits, want, rtol=0, atol=0)


def test_generate_with_pixel_values(tiny_model):
    ids = torch.tensor([[1, 10, IMG, IMG, 11, 2, 1]])
    pv = torch.randn(2, 3, 32, 32)
    out = tiny_model.generate(input_ids=ids, pixel_values=pv, max_new_tokens=6, do_sample=False,
                              min_new_tokens=6)
    assert out.shape == (1, ids.shape[1] + 6)
    assert torch.equal(out[:, : ids.shape[1]], ids)
    # greedy decoding agrees with argmax of a full forward pass for the first new token
    first = tiny_model(input_ids=ids, pixel_values=pv).logits[0, -1].argmax()
    assert out[0, ids.shape[1]] == first


def test_attention_implementation_follows_config():
    m = LongVILAForCausalLM(tiny_config())
    assert m.language_model.config._attn_implementation == "sdpa"
    m.language_model.set_attn_implementation("eager")
    assert m.language_model.config._attn_implementation == "eager"
    ids = torch.tensor([[1, IMG, 11, 2]])
    pv = torch.randn(1, 3, 32, 32)
    eager = m(input_ids=ids, pixel_values=pv).logits
    m.language_model.set_attn_implementation("sdpa")
    torch.testing.assert_close(m(input_ids=ids, pixel_values=pv).logits, eager, rtol=1e-5, atol=1e-5)


def test_packed_position_ids_are_used(tiny_model):
    ids = torch.tensor([[1, 10, 11, 1, 10, 11]])
    restart = torch.tensor([[0, 1, 2, 0, 1, 2]])
    a = tiny_model(input_ids=ids, position_ids=restart).logits
    b = tiny_model(input_ids=ids).logits
    assert not torch.allclose(a[0, 3:], b[0, 3:])


def test_registered_attention_is_used_by_the_llm():
    """A sequence-parallel attention registered through AttentionInterface can be switched on from outside."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    calls = []

    def counting_attention(module, query, key, value, attention_mask, **kwargs):
        calls.append(query.shape)  # (B, H, L, head_dim)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)

    AttentionInterface.register("longvila_test_attention", counting_attention)
    torch.manual_seed(0)
    m = LongVILAForCausalLM(tiny_config()).eval()
    ids = torch.tensor([[1, IMG, 11, 12, 2]])
    pv = torch.randn(1, 3, 32, 32)
    want = m(input_ids=ids, pixel_values=pv).logits
    m.language_model.set_attn_implementation("longvila_test_attention")
    got = m(input_ids=ids, pixel_values=pv).logits
    assert len(calls) == 4 and calls[0] == (1, 4, 5, 32)  # 4 layers, 4 query heads of 32
    torch.testing.assert_close(got, want)
    # or chosen through the config at construction
    cfg = tiny_config()
    cfg.text_config._attn_implementation = "longvila_test_attention"
    calls.clear()
    LongVILAForCausalLM(cfg)(input_ids=ids, pixel_values=pv)
    assert len(calls) == 4


def test_gradient_checkpointing_matches():
    torch.manual_seed(0)
    m = LongVILAForCausalLM(tiny_config())
    ids = torch.tensor([[1, IMG, IMG, 11, 12, 2]])
    pv = torch.randn(2, 3, 32, 32)
    m(input_ids=ids, pixel_values=pv, labels=ids).loss.backward()
    want = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.activation_checkpointing_enable()
    m.train()
    m(input_ids=ids, pixel_values=pv, labels=ids).loss.backward()
    for n, p in m.named_parameters():
        torch.testing.assert_close(p.grad, want[n], msg=n)


def test_batched_generate_with_left_padding_matches_single(tiny_model):
    a = torch.tensor([1, 10, IMG, IMG, 11, 2, 1])
    b = torch.tensor([1, IMG, 2, 1])
    pv = torch.randn(3, 3, 32, 32)  # a's two frames, then b's one
    ids = torch.zeros(2, 7, dtype=torch.long)
    mask = torch.zeros(2, 7, dtype=torch.long)
    ids[0], mask[0] = a, 1
    ids[1, 3:], mask[1, 3:] = b, 1
    kw = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False)
    both = tiny_model.generate(input_ids=ids, attention_mask=mask, pixel_values=pv, **kw)
    one_a = tiny_model.generate(input_ids=a[None], pixel_values=pv[:2], **kw)
    one_b = tiny_model.generate(input_ids=b[None], pixel_values=pv[2:], **kw)
    assert torch.equal(both[0, 7:], one_a[0, 7:])
    assert torch.equal(both[1, 7:], one_b[0, 4:])


def test_loss_without_labelled_tokens_is_zero_not_nan(tiny_model):
    logits = torch.randn(2, 5, 824, requires_grad=True)
    loss = causal_lm_loss(logits, torch.full((2, 5), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_kv_cache_continuation_under_either_name_without_deprecation(tiny_model):
    """A prefix's cache continues decoding whether passed as ``cache`` or transformers' older ``past_key_values``,
    equals the full forward, and the project's own calls raise no deprecation warning."""
    import warnings

    from longvila.model.kv_cache import cache_kwargs, output_cache

    ids = torch.randint(10, 200, (1, 12))
    full = tiny_model(input_ids=ids).logits[:, 8:]
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        cache = output_cache(tiny_model(input_ids=ids[:, :8], use_cache=True))
        assert cache is not None and cache.get_seq_length() == 8
        pos = torch.arange(8, 12)[None]
        llm = tiny_model.language_model
        direct = llm(input_ids=ids[:, 8:], position_ids=pos, **cache_kwargs(llm, cache)).logits
    torch.testing.assert_close(direct, full, atol=2e-5, rtol=1e-4)
    for name in ("cache", "past_key_values"):
        cache = output_cache(tiny_model(input_ids=ids[:, :8], use_cache=True))
        got = tiny_model(input_ids=ids[:, 8:], position_ids=pos, **{name: cache}).logits
        torch.testing.assert_close(got, full, atol=2e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="KV cache once"):
        tiny_model(input_ids=ids[:, 8:], cache=cache, past_key_values=cache)


def test_kv_cache_argument_name_follows_the_model_class():
    from longvila.model.kv_cache import cache_kwargs, output_cache, output_field

    class Old:
        def forward(self, input_ids=None, past_key_values=None): ...

    class New:
        def forward(self, input_ids=None, cache=None): ...

    class Neither:
        def forward(self, input_ids=None): ...

    assert cache_kwargs(Old(), "c") == {"past_key_values": "c"}
    assert cache_kwargs(New(), "c") == {"cache": "c"}
    with pytest.raises(TypeError, match="Neither.forward takes neither"):
        cache_kwargs(Neither(), "c")
    old_out = type("O", (), {"past_key_values": "kv"})()
    assert output_cache(old_out) == "kv"
    assert output_cache(type("N", (), {"cache": "kv2"})()) == "kv2"
    assert output_cache(object()) is None
    from transformers.modeling_outputs import CausalLMOutputWithPast
    assert output_field(CausalLMOutputWithPast) in ("cache", "past_key_values")
