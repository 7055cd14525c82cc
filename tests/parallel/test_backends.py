"""Attention backends without a GPU: which kernel ``backends.resolve`` picks for a device, dtype, head
dimension and set of installed packages, the errors of impossible choices, and the flash-attn and
ring-flash-attn adapters run against CPU stand-ins of those packages (``fake_flash.py``), exact against
masked SDPA in output and every gradient."""

import fake_flash
import pytest
import torch
import torch.nn.functional as F

from longvila.parallel import backends
from longvila.parallel.attention import plan_from_positions, segment_ids_from_positions, sp_attention
from longvila.parallel.backends import FlashAttn, TorchCPU, TorchEfficient, TorchFlash, check_choice, resolve
from longvila.parallel.mesh import SPMesh

CUDA = torch.device("cuda")


@pytest.fixture
def no_packages(monkeypatch):
    """Neither flash-attn nor ring-flash-attn importable, whatever this machine has."""
    for name in ("flash_attn", "ring_flash_attn"):
        monkeypatch.setitem(backends.sys.modules, name, None)
        monkeypatch.setattr(backends, "_MISSING", backends._MISSING | {name})


@pytest.fixture
def fake_packages(monkeypatch):
    calls: list[str] = []
    monkeypatch.setitem(backends.sys.modules, "flash_attn", fake_flash.make_flash_attn(calls))
    monkeypatch.setitem(backends.sys.modules, "ring_flash_attn", fake_flash.make_ring_flash_attn(calls))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_always_gets_the_cpu_flash_op(no_packages, dtype):
    for choice in ("auto", "torch"):
        assert isinstance(resolve(choice, "cpu", dtype, 32), TorchCPU)


@pytest.mark.parametrize("choice", ["flash_attn", "ring_flash_attn"])
def test_cuda_only_backends_refuse_cpu_tensors_naming_torch(fake_packages, choice):
    with pytest.raises(ValueError, match=f"attn_backend='{choice}' runs on CUDA tensors only.*'torch'"):
        resolve(choice, "cpu", torch.bfloat16, 32)


def test_torch_on_cuda_flash_for_half_efficient_for_fp32(no_packages):
    for choice in ("auto", "torch"):
        assert type(resolve(choice, CUDA, torch.bfloat16, 64)) is TorchFlash
        assert type(resolve(choice, CUDA, torch.float16, 128)) is TorchFlash
        assert type(resolve(choice, CUDA, torch.float32, 64)) is TorchEfficient
    # a head dimension past the flash op's 256 takes the efficient op; one it cannot align is an error
    assert type(resolve("torch", CUDA, torch.bfloat16, 320)) is TorchEfficient
    with pytest.raises(ValueError, match="multiple of 8.*got 36"):
        resolve("torch", CUDA, torch.bfloat16, 36)
    with pytest.raises(ValueError, match=r"multiple of 4.*got 30"):
        resolve("torch", CUDA, torch.float32, 30)
    with pytest.raises(ValueError, match="no CUDA attention kernel for torch.float64"):
        resolve("torch", CUDA, torch.float64, 64)


def test_missing_packages_are_errors_naming_the_alternative(no_packages):
    with pytest.raises(ValueError, match="flash-attn is not installed.*attn_backend='torch'"):
        resolve("flash_attn", CUDA, torch.bfloat16, 64)
    with pytest.raises(ValueError, match="flash-attn is not installed"):
        resolve("ring_flash_attn", CUDA, torch.bfloat16, 64)
    with pytest.raises(ValueError, match="flash-attn is not installed.*'auto' or 'torch'"):
        check_choice("flash_attn")
    with pytest.raises(ValueError, match="choose one of"):
        check_choice("xformers")
    with pytest.raises(ValueError, match="choose one of"):
        resolve("sdpa", "cpu", torch.float32, 64)
    check_choice("auto")
    check_choice("torch")


def test_ring_flash_attn_needs_both_packages(monkeypatch):
    monkeypatch.setitem(backends.sys.modules, "flash_attn", fake_flash.make_flash_attn([]))
    monkeypatch.setitem(backends.sys.modules, "ring_flash_attn", None)
    monkeypatch.setattr(backends, "_MISSING", backends._MISSING | {"ring_flash_attn"})
    with pytest.raises(ValueError, match="ring-flash-attn is not installed"):
        resolve("ring_flash_attn", CUDA, torch.bfloat16, 64)
    assert isinstance(resolve("flash_attn", CUDA, torch.bfloat16, 64), FlashAttn)


def test_flash_attn_chosen_only_when_present_and_fitting(fake_packages):
    assert isinstance(resolve("auto", CUDA, torch.bfloat16, 64), FlashAttn)
    assert isinstance(resolve("flash_attn", CUDA, torch.float16, 256), FlashAttn)
    assert isinstance(resolve("ring_flash_attn", CUDA, torch.bfloat16, 64), FlashAttn)
    assert type(resolve("auto", CUDA, torch.float32, 64)) is TorchEfficient  # auto: fp32 is not flash's
    assert type(resolve("auto", CUDA, torch.bfloat16, 320)) is TorchEfficient
    with pytest.raises(ValueError, match="flash-attn takes fp16/bf16, got torch.float32.*attn_backend='torch'"):
        resolve("flash_attn", CUDA, torch.float32, 64)
    with pytest.raises(ValueError, match="up to 256, got 320"):
        resolve("flash_attn", CUDA, torch.bfloat16, 320)
    check_choice("flash_attn")
    check_choice("ring_flash_attn")


def _packed(lengths_per_row, h=4, hkv=2, d=8, seed=0):
    torch.manual_seed(seed)
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths_per_row])
    s = pos.shape[1]
    qkv = torch.randn(len(lengths_per_row), h, s, d), torch.randn(len(lengths_per_row), hkv, s, d), \
        torch.randn(len(lengths_per_row), hkv, s, d)
    return pos, qkv


def _reference(q, k, v, pos, scale):
    seg = segment_ids_from_positions(pos, SPMesh.single(), q.shape[0])
    s = q.shape[2]
    mask = torch.ones(s, s, dtype=torch.bool).tril() & (seg[:, :, None] == seg[:, None, :])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None], scale=scale, enable_gqa=True)


def _check_against_reference(run, pos, qkv, scale=0.3):
    a = [t.clone().requires_grad_() for t in qkv]
    b = [t.clone().requires_grad_() for t in qkv]
    out = run(*a)
    ref = _reference(*b, pos, scale)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.grad, y.grad, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("lengths", [((24,), (24,)), ((11, 13), (11, 13)), ((1, 7, 4, 12), (9, 15))])
def test_flash_attn_adapter_is_exact_plain_and_varlen(fake_packages, lengths):
    """Through flash-attn's API (stand-in on the CPU): (B, S, H, D) layout, native GQA, one varlen call per
    packed block with the plan's cu_seqlens, rows packed alike or differently, and its backward."""
    pos, qkv = _packed(lengths)
    kernel = FlashAttn(backends.sys.modules["flash_attn"])
    plan = plan_from_positions(pos, SPMesh.single(), batch=2)
    _check_against_reference(lambda q, k, v: sp_attention(q, k, v, SPMesh.single(), plan, 0.3, backend=kernel),
                             pos, qkv)
    single = len(lengths[0]) == 1
    want = {"flash_attn_func", "_flash_attn_backward"} if single else \
        {"flash_attn_varlen_func", "_flash_attn_varlen_backward"}
    assert set(fake_packages) == want


def test_flash_attn_backward_signature_we_do_not_know_is_named():
    def _flash_attn_backward(dout, q, k, v, out, softmax_lse, dq, dk, dv, new_required_arg):
        raise AssertionError("must not be called")

    with pytest.raises(TypeError, match=r"wants \['new_required_arg'\].*attn_backend='torch'"):
        backends._call(_flash_attn_backward, dout=1, q=1, k=1, v=1, out=1, softmax_lse=1, dq=1, dk=1, dv=1,
                       window_size=(-1, -1))


@pytest.mark.parametrize("lengths", [((20,),), ((5, 9, 6), (12, 8))])
def test_ring_flash_attn_inner_is_exact_on_one_ring_rank(fake_packages, lengths):
    """ring-flash-attn behind sp_attention (stand-in, one ring rank): its dense zigzag function for one
    sample, its varlen function with the samples' cu_seqlens for packed rows."""
    pos, qkv = _packed([lengths[0]] * 2 if len(lengths) == 1 else lengths, seed=1)
    kernel = FlashAttn(backends.sys.modules["flash_attn"])
    kernel.name = "ring_flash_attn"
    plan = plan_from_positions(pos, SPMesh.single(), batch=2)
    _check_against_reference(lambda q, k, v: sp_attention(q, k, v, SPMesh.single(), plan, 0.3, backend=kernel),
                             pos, qkv)
    assert fake_packages == ["zigzag_ring_flash_attn_varlen_func" if plan.packed else "zigzag_ring_flash_attn_func"]


def test_ring_flash_attn_refuses_packed_rows_over_a_ring(fake_packages, monkeypatch):
    from longvila.parallel import ring_flash

    pos, (q, k, v) = _packed(((5, 9, 6), (12, 8)))
    plan = plan_from_positions(pos, SPMesh.single(), batch=2)
    monkeypatch.setattr(ring_flash, "group_size", lambda group: 2)
    with pytest.raises(ValueError, match="packed rows over a ring of 2 ranks.*'flash_attn' or 'torch'"):
        ring_flash.ring_flash_attn_inner(q, k, v, group=object(), plan=plan)
    kernel = FlashAttn(backends.sys.modules["flash_attn"])
    kernel.name = "ring_flash_attn"
    with pytest.raises(ValueError, match="zigzag ring only, got ring='contiguous'"):
        sp_attention(q, k, v, SPMesh.single(), None, 0.3, ring="contiguous", backend=kernel)
