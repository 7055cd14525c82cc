"""CUDA placement without a GPU: FakeTensorMode with fake CUDA tensors (the pinned torch is a CUDA build)
traces forward passes through meta kernels and raises FakeTensorDeviceMismatchError on any CPU/CUDA mixing.

Traced here: ``sp_attention`` on a one-rank mesh with PyTorch's CUDA flash op (bf16) and efficient op
(fp32), plain and packed (GQA); the block backward and the ring backward of each (called directly:
autograd's own backward asks for a real CUDA context); one forward of the tiny VLM with
``apply_sequence_parallel`` (packed positions, log-n scaling on); an ``sp_generate`` prefill with two decode
steps. Plans are made on the host from real position ids, outside the fake mode, as the MM-SP step does.

Not caught this way (tested apart, in ``test_backends.py``): a CPU-only op called on fake CUDA tensors,
and numerics (fake tensors hold no data).
"""

import types

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError, FakeTensorMode

from longvila.parallel.attention import plan_from_positions, sp_attention, use_plan
from longvila.parallel.backends import TorchEfficient, TorchFlash
from longvila.parallel.kernels import block_backward, block_forward
from longvila.parallel.mesh import SPMesh
from longvila.parallel.ring_attn import zigzag_schedule
from longvila.parallel.ring_core import RingAttention

PACKED = torch.cat([torch.arange(n) for n in (7, 1, 12, 12)])[None]  # 32 tokens, 4 samples


@pytest.fixture
def fake():
    """The mode, not entered: real tensors that enter it (the model's CPU weights, plans) become fake
    tensors on their own device."""
    return FakeTensorMode(allow_non_fake_inputs=True)


def test_the_fake_mode_catches_device_mixing(fake):
    """The premise of this file: a CPU tensor meeting a CUDA one raises, also as an SDPA mask."""
    with fake:
        _mixing_raises()


def _mixing_raises():
    x = torch.zeros(4, device="cuda")
    assert x.device.type == "cuda"
    with pytest.raises(FakeTensorDeviceMismatchError):
        x + torch.zeros(4)
    q = torch.empty(1, 2, 8, 16, device="cuda")
    with pytest.raises(FakeTensorDeviceMismatchError):
        F.scaled_dot_product_attention(q, q, q, attn_mask=torch.ones(8, 8, dtype=torch.bool).tril())
    with pytest.raises(FakeTensorDeviceMismatchError):
        x.index_select(0, torch.arange(2))


def _qkv(dtype, b=1, s=32):
    return (torch.empty(b, 4, s, 32, device="cuda", dtype=dtype),
            *(torch.empty(b, 2, s, 32, device="cuda", dtype=dtype) for _ in range(2)))


@pytest.mark.parametrize("dtype,kernel", [(torch.bfloat16, TorchFlash), (torch.float32, TorchEfficient)])
@pytest.mark.parametrize("packed", [False, True])
def test_sp_attention_and_its_backward_trace_on_cuda(dtype, kernel, packed):
    plan = plan_from_positions(PACKED if packed else None, SPMesh.single())
    assert plan.packed == packed
    with FakeTensorMode(allow_non_fake_inputs=True):
        q, k, v = _qkv(dtype)
        out = sp_attention(q, k, v, SPMesh.single(), plan, backend="torch")
        assert out.shape == q.shape and out.device.type == "cuda" and out.dtype == dtype
        # the ring's forward and backward, called directly, with the resolved kernel
        kern = kernel()
        ctx = types.SimpleNamespace(save_for_backward=lambda *t: setattr(ctx, "saved_tensors", t))
        o = RingAttention.forward(ctx, q, k, v, None, None, None, zigzag_schedule, plan.steps, kern)
        assert o.device.type == "cuda" and ctx.saved_tensors[4].dtype == torch.float32  # the LSE stays fp32
        dq, dk, dv = RingAttention.backward(ctx, torch.empty_like(o))[:3]
        assert (dq.shape, dk.shape, dv.shape) == (q.shape, k.shape, v.shape)
        assert {t.device.type for t in (dq, dk, dv)} == {"cuda"}


@pytest.mark.parametrize("kernel", [TorchFlash, TorchEfficient])
def test_the_masked_fallback_traces_on_cuda(kernel):
    """A sample in two runs of a block takes the float mask, built on the device from device segment ids."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        q, k, v = _qkv(torch.bfloat16, s=24)
        seg = torch.tensor([[0] * 8 + [8] * 8 + [0] * 8]).to("cuda")
        from longvila.parallel.kernels import MASK, BlockPlan

        out, lse = block_forward(q, k, v, False, None, seg, seg, plan=BlockPlan(MASK), kernel=kernel())
        assert out.device.type == lse.device.type == "cuda"
        grads = block_backward(torch.empty_like(out), q, k, v, out, lse, False, None, seg, seg, plan=BlockPlan(MASK),
                               kernel=kernel())
        assert [g.shape for g in grads] == [q.shape, k.shape, v.shape]


def _fake_cuda_model(fake):
    from longvila.model import LongVILAForCausalLM, tiny_config
    from longvila.parallel.hf import apply_sequence_parallel

    torch.manual_seed(0)
    model = LongVILAForCausalLM(tiny_config()).eval()  # real weights, made on the CPU
    model.language_model.config.logn_attention_base = 8
    torch.__future__.set_swap_module_params_on_conversion(False)
    with fake:
        model.to("cuda")
    assert next(model.parameters()).device.type == "cuda"
    return apply_sequence_parallel(model, attn_backend="torch")


def test_tiny_vlm_forward_with_sequence_parallel_traces_on_cuda(fake):
    model = _fake_cuda_model(fake)
    plan = plan_from_positions(PACKED, SPMesh.single())
    with fake, torch.no_grad():
        pixels = torch.empty(3, 3, 32, 32, device="cuda")
        visual = model.encode_frames(pixels)
        assert visual.device.type == "cuda"
        embeds = torch.empty(1, 32, model.config.text_config.hidden_size, device="cuda")
        with use_plan(plan):
            out = model(inputs_embeds=embeds, position_ids=PACKED.to("cuda"))
    assert out.logits.shape == (1, 32, model.config.text_config.vocab_size) and out.logits.device.type == "cuda"


def test_sp_generate_prefill_and_two_decode_steps_trace_on_cuda(fake):
    from longvila.parallel.inference import sp_generate

    model = _fake_cuda_model(fake)
    with fake:
        embeds = torch.empty(2, 20, model.config.text_config.hidden_size, device="cuda")
        tokens = sp_generate(model.language_model, embeds, max_new_tokens=3)
    assert tokens.shape == (2, 3) and tokens.device.type == "cuda"


def test_decoding_several_queries_against_a_cache_traces_on_cuda(fake):
    """Decode attention with more than one new query builds its end-aligned causal mask on the device."""
    from longvila.parallel.hf import _decode_attention

    with fake:
        q = torch.empty(1, 4, 3, 32, device="cuda")
        k = v = torch.empty(1, 2, 10, 32, device="cuda")
        out = _decode_attention(q, k, v, None)
    assert out.shape == q.shape and out.device.type == "cuda"
