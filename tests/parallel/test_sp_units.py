"""Fast single-process checks: layout validation, planner, kernels and merge, zigzag layout, HF
integration on one rank (packed samples), MM-SP helpers."""

import pytest
import torch
import torch.nn.functional as F
from longvila.parallel.attention import segment_ids_from_positions, sp_attention
from longvila.parallel.kernels import block_forward, merge
from longvila.parallel.mesh import ParallelDims, SPMesh, build_mesh
from longvila.parallel.mmsp import balanced_split, pad_positions, shift_labels
from longvila.parallel.planner import plan_layout
from longvila.parallel.zigzag import padded_length, zigzag_index, zigzag_shard


class _FakeMesh(SPMesh):
    """A mesh object with a chosen position in a layout, to test index maths without processes."""

    def __init__(self, u, r, sp_rank):
        super().__init__(ParallelDims(1, u, r, u * r))
        ri, ui = divmod(sp_rank, u)
        self.coords = {"dp": 0, "sp_ring": ri, "sp_ulysses": ui}


@pytest.mark.parametrize("kwargs,msg", [
    (dict(dp=1, sp_ulysses=2, sp_ring=2, world_size=3), "world has 3"),
    (dict(dp=0), "positive integer"),
    (dict(sp_ulysses=-1), "positive integer"),
])
def test_invalid_layouts_fail_clearly(kwargs, msg):
    with pytest.raises(ValueError, match=msg):
        ParallelDims(**kwargs)


def test_head_validation():
    ParallelDims(1, 4, 1).validate_heads(4, 2)  # KV replicated x2
    ParallelDims(1, 2, 1).validate_heads(4, 2)
    with pytest.raises(ValueError, match="does not divide num_heads=4"):
        ParallelDims(1, 8, 1).validate_heads(4, 2)
    with pytest.raises(ValueError, match="KV heads must split"):
        ParallelDims(1, 4, 1).validate_heads(12, 6)


def test_coords_are_consecutive_for_ulysses_and_strided_for_ring():
    d = ParallelDims(dp=2, sp_ulysses=2, sp_ring=2, world_size=8)
    assert [d.coords(r)["sp_ulysses"] for r in range(4)] == [0, 1, 0, 1]
    assert [d.coords(r)["sp_ring"] for r in range(4)] == [0, 0, 1, 1]
    assert d.coords(5) == {"dp": 1, "sp_ring": 0, "sp_ulysses": 1}
    assert all(d.rank_of(**d.coords(r)) == r for r in range(8))


def test_build_mesh_without_distributed():
    assert build_mesh(ParallelDims()).sp_size == 1
    with pytest.raises(RuntimeError, match="torch.distributed"):
        build_mesh(ParallelDims(1, 2, 1, 2))


@pytest.mark.parametrize("u,r", [(1, 2), (2, 1), (2, 2), (1, 4)])
def test_zigzag_layout_covers_sequence_and_balances_causal_work(u, r):
    total = padded_length(45, _FakeMesh(u, r, 0))
    assert total % (2 * u * r) == 0 and total >= 45
    idx = [zigzag_index(total, _FakeMesh(u, r, p)) for p in range(u * r)]
    assert sorted(torch.cat(idx).tolist()) == list(range(total))
    # causal work of a ring rank = sum over its queries of (position + 1): equal for every ring rank
    work = [sum(int(i) + 1 for p in range(ri * u, (ri + 1) * u) for i in idx[p]) for ri in range(r)]
    assert len(set(work)) == 1


def test_zigzag_shard_pads_never_truncates():
    m = _FakeMesh(1, 2, 1)
    x = torch.arange(7.0)[None]
    local = zigzag_shard(x, 1, m, pad_value=-1)
    assert local.shape[1] == 4 and local.tolist() == [[2.0, 3.0, 4.0, 5.0]]
    last = zigzag_shard(x, 1, _FakeMesh(1, 2, 0), pad_value=-1)
    assert last.tolist() == [[0.0, 1.0, 6.0, -1.0]]


def test_merge_equals_attention_over_the_union_and_handles_empty_rows():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 10, 8), torch.randn(1, 2, 10, 8)
    o1, l1 = block_forward(q, k[:, :, :4], v[:, :, :4], False)
    o2, l2 = block_forward(q, k[:, :, 4:], v[:, :, 4:], False)
    out, lse = merge(*merge(None, None, o1, l1), o2, l2)
    ref = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(lse, torch.logsumexp(q @ k.transpose(-1, -2) / 8**0.5, -1), atol=2e-6, rtol=1e-5)
    # a fully masked row (different sample) has lse -inf and contributes nothing
    qs, ks = torch.tensor([[0, 0, 0, 0, 0, 1]]), torch.zeros(1, 4, dtype=torch.long)
    ob, lb = block_forward(q, k[:, :, :4], v[:, :, :4], False, None, qs, ks)
    assert torch.isinf(lb[0, :, 5]).all() and not torch.isnan(ob).any()
    out2, lse2 = merge(None, None, ob, lb)
    out3, _ = merge(out2, lse2, ob, lb)
    assert not torch.isnan(out3).any()


def test_one_rank_attention_gradients_match_sdpa_packed():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 30, 8), torch.randn(2, 2, 30, 8), torch.randn(2, 2, 30, 8)
    pos = torch.cat([torch.arange(11), torch.arange(19)])[None]
    seg = segment_ids_from_positions(pos, SPMesh.single(), 2)
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    out = sp_attention(*args, SPMesh.single(), seg)
    ref_args = [t.clone().requires_grad_() for t in (q, k, v)]
    mask = torch.ones(30, 30, dtype=torch.bool).tril() & (seg[0][:, None] == seg[0][None, :])
    ref = F.scaled_dot_product_attention(*ref_args, attn_mask=mask, enable_gqa=True)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    for a, b in zip(args, ref_args, strict=True):
        torch.testing.assert_close(a.grad, b.grad, atol=2e-6, rtol=1e-5)


def test_bad_local_shapes_fail_clearly():
    with pytest.raises(ValueError, match="do not match"):
        sp_attention(torch.randn(1, 4, 8, 4), torch.randn(1, 3, 8, 4), torch.randn(1, 3, 8, 4), SPMesh.single())
    with pytest.raises(ValueError, match="segment_ids shape"):
        sp_attention(torch.randn(1, 4, 8, 4), torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4), SPMesh.single(),
                     torch.zeros(1, 7, dtype=torch.long))


def test_hf_one_rank_packed_equals_separate_samples_and_generates():
    from longvila.model import LongVILAForCausalLM, tiny_config
    from longvila.parallel.hf import apply_sequence_parallel, remove_sequence_parallel

    torch.manual_seed(0)
    model = LongVILAForCausalLM(tiny_config()).eval()
    ids = torch.randint(20, 400, (1, 40))
    prompt = ids[:, :9]
    ref_gen = model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False)
    with torch.no_grad():
        a, b = model(input_ids=ids[:, :15]).logits, model(input_ids=ids[:, 15:]).logits
        apply_sequence_parallel(model)
        assert model.language_model.config._attn_implementation == "longvila_sp"
        packed = model(input_ids=ids, position_ids=torch.cat([torch.arange(15), torch.arange(25)])[None]).logits
    torch.testing.assert_close(packed, torch.cat([a, b], 1), atol=1e-5, rtol=1e-4)
    assert torch.equal(model.generate(input_ids=prompt, max_new_tokens=4, do_sample=False), ref_gen)
    with pytest.raises(ValueError, match="padding attention masks"):
        model(input_ids=ids, attention_mask=torch.cat([torch.zeros(1, 3), torch.ones(1, 37)], 1).long())
    remove_sequence_parallel(model)
    assert model.language_model.config._attn_implementation == "sdpa"


def test_apply_rejects_impossible_ulysses_degree():
    from longvila.model import LongVILAForCausalLM, tiny_config
    from longvila.parallel.hf import apply_sequence_parallel

    with pytest.raises(ValueError, match="does not divide num_heads=4"):
        apply_sequence_parallel(LongVILAForCausalLM(tiny_config()), SPMesh(ParallelDims(1, 8, 1)))


def test_mmsp_helpers():
    assert balanced_split(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert balanced_split(1, 3) == [(0, 1), (1, 1), (1, 1)]
    assert shift_labels(torch.tensor([[-100, 5, 6]])).tolist() == [[5, 6, -100]]
    assert pad_positions(torch.tensor([[0, 1, 0, 1, 2]]), 8).tolist() == [[0, 1, 0, 1, 2, 3, 4, 5]]


def test_planner_rule():
    p = plan_layout(heads=28, kv_heads=4, gpus_per_node=8, nodes=4, seq_len=1_000_000)
    assert (p.dims.sp_ulysses, p.dims.sp_ring) == (4, 8)  # 28 heads: U | 8 and U | 28 -> 4
    p = plan_layout(heads=32, kv_heads=8, gpus_per_node=8, nodes=2, seq_len=4096)
    assert (p.dims.sp_ulysses, p.dims.sp_ring) == (8, 2) and p.padding == 0
    p = plan_layout(heads=4, kv_heads=2, gpus_per_node=2, nodes=1, seq_len=6001)
    assert (p.dims.sp_ulysses, p.dims.sp_ring) == (2, 1) and p.padding == 3 and "Ulysses" in str(p)
    with pytest.raises(ValueError, match="kv_heads"):
        plan_layout(heads=6, kv_heads=4, gpus_per_node=2, nodes=1, seq_len=10)
