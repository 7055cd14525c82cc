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


@pytest.mark.parametrize("lengths", [((11, 19), (11, 19)), ((1, 7, 1, 12, 3), (4, 20)), ((24,), (24,)),
                                     ((5, 5, 5, 5, 4), (3, 21))])
def test_one_rank_packed_rows_equal_masked_attention(lengths):
    """On one rank, packed rows (packed alike or differently: the kernel's per-sample plans) give per-row
    masked SDPA: output and every gradient, GQA and a custom scale included."""
    torch.manual_seed(1)
    pos = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])
    seg = segment_ids_from_positions(pos, SPMesh.single(), 2)
    s = pos.shape[1]
    q, k, v = torch.randn(2, 4, s, 8), torch.randn(2, 2, s, 8), torch.randn(2, 2, s, 8)
    a = [t.clone().requires_grad_() for t in (q, k, v)]
    b = [t.clone().requires_grad_() for t in (q, k, v)]
    out = sp_attention(*a, SPMesh.single(), seg, scale=0.3)
    mask = torch.ones(s, s, dtype=torch.bool).tril() & (seg[:, :, None] == seg[:, None, :])
    ref = F.scaled_dot_product_attention(*b, attn_mask=mask[:, None], scale=0.3, enable_gqa=True)
    g = torch.randn_like(ref)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.grad, y.grad, atol=2e-6, rtol=1e-5)


def _seg_ids(lengths, start=0):
    return torch.cat([torch.full((n,), start + sum(lengths[:i])) for i, n in enumerate(lengths)])[None]


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("packing", ["alike", "rows_differ", "split"])
def test_block_kernel_per_sample_plan_equals_masked_attention(causal, packing):
    """A packed block computed sample by sample (``segment_plan``; one plan per row when rows are packed
    differently) gives the masked attention's output, LSE and gradients; a sample in two runs of the block
    takes the masked fallback and agrees too. Non-causal blocks are laid out as the ring has them: every key
    before every query, a sample running across the gap."""
    from longvila.parallel.kernels import batch_plans, block_backward, segment_plan

    rows_differ = packing != "alike"
    torch.manual_seed(3)
    if causal:
        q_seg = k_seg = _seg_ids([5, 1, 9, 7])
        allowed = (q_seg[0][:, None] == k_seg[0][None, :]) & torch.ones(22, 22, dtype=torch.bool).tril()
    else:  # keys: positions 0..17 (samples at 0, 6, 10); queries: positions 30..45 (sample 10 goes on, then 40)
        k_seg, q_seg = _seg_ids([6, 4, 8]), torch.cat([torch.full((10,), 10), torch.full((6,), 40)])[None]
        allowed = q_seg[0][:, None] == k_seg[0][None, :]
    if rows_differ:
        q_seg = torch.cat([q_seg, q_seg.flip(1)])  # the same samples in the opposite order
        k_seg = q_seg if causal else torch.cat([k_seg, k_seg])
        assert segment_plan(q_seg, k_seg, causal) is None
        if packing == "split":  # the second row's last sample moves to the front: one id in two runs
            q_seg = torch.cat([q_seg[:1], q_seg[1:].roll(3, 1)])
            k_seg = q_seg if causal else torch.cat([k_seg[:1], k_seg[1:].roll(3, 1)])
        assert (batch_plans(q_seg, k_seg, causal) is None) == (packing == "split")
    else:
        assert segment_plan(q_seg, k_seg, causal) is not None
        q_seg, k_seg = q_seg.expand(2, -1), k_seg.expand(2, -1)
    sq, sk = q_seg.shape[1], k_seg.shape[1]
    q = torch.randn(2, 4, sq, 8, requires_grad=True)
    k, v = (torch.randn(2, 2, sk, 8, requires_grad=True) for _ in range(2))
    out, lse = block_forward(q, k, v, causal, 0.5, q_seg, k_seg)
    mask = torch.stack([(q_seg[b][:, None] == k_seg[b][None, :]) & (torch.ones(sq, sk, dtype=torch.bool).tril()
                        if causal else True) for b in range(2)])[:, None]
    if not rows_differ:
        assert torch.equal(mask[0, 0], allowed)
    logits = (q @ k.repeat_interleave(2, 1).transpose(-1, -2)) * 0.5
    logits = logits.masked_fill(~mask, float("-inf"))
    ref_lse = torch.logsumexp(logits, -1)
    empty = ~mask.any(-1)
    ref = torch.softmax(logits.masked_fill(empty[..., None], 0.0), -1).masked_fill(empty[..., None], 0.0) \
        @ v.repeat_interleave(2, 1)
    torch.testing.assert_close(out, ref, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(lse, ref_lse.masked_fill(empty, float("-inf")), atol=2e-6, rtol=1e-5)
    g = torch.randn_like(ref)
    # the ring passes the final LSE, finite for every row (a token sees itself at step 0)
    final_lse = lse.masked_fill(torch.isinf(lse), 0.0)
    dq, dk, dv = block_backward(g, q.detach(), k.detach(), v.detach(), out.detach(), final_lse, causal, 0.5, q_seg,
                                k_seg)
    rq, rk, rv = torch.autograd.grad(ref, (q, k, v), g)
    for a, b in ((dq, rq), (dk, rk), (dv, rv)):
        torch.testing.assert_close(a, b, atol=2e-6, rtol=1e-5)


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


def test_naive_token_sharding_on_one_rank_keeps_frame_order():
    from longvila.model import LongVILAForCausalLM, tiny_config
    from longvila.parallel.mmsp import encode_frames_balanced, encode_frames_by_token

    torch.manual_seed(0)
    model = LongVILAForCausalLM(tiny_config())
    img = model.config.image_token_id
    ids = torch.tensor([[5, img, img, 7, img, 9]])
    pix = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = model.encode_frames(pix)
        naive, n_naive = encode_frames_by_token(model, ids, pix, SPMesh.single(), img)
        bal, n_bal = encode_frames_balanced(model, pix, SPMesh.single())
    assert n_naive == n_bal == 3
    torch.testing.assert_close(naive, ref)
    torch.testing.assert_close(bal, ref)


def test_bench_report_ratios_table_and_result(tmp_path, monkeypatch):
    from longvila.leaderboards.results import load_result
    from longvila.parallel.bench_report import report

    def m(f, b):
        return {"fwd_s": f, "fwdbwd_s": b, "fwd_cpu_s": f / 2, "fwdbwd_cpu_s": b / 2, "peak_mib_per_rank": [10.0, 12.0]}

    raw = {
        "reference": {"8192": {**m(2.0, 8.0), "peak_mib_per_rank": [30.0]}},
        "attention-2": {"8192": {"basic_ring": m(1.6, 6.0), "deepspeed_ulysses": m(1.2, 4.8),
                                 "zigzag_ring": m(1.0, 4.0), "ulysses": m(1.1, 4.4)}},
        "frames-2": {"balanced": {"step_s": 1.0, "step_cpu_s": 0.5, "frames_per_rank": [5, 5], "max_over_mean": 1.0},
                     "token": {"step_s": 1.5, "step_cpu_s": 1.0, "frames_per_rank": [10, 0], "max_over_mean": 2.0}},
    }
    monkeypatch.setenv("LONGVILA_RESULTS_DIR", str(tmp_path / "published"))
    out = report({"seq_lens": [8192], "seed": 0}, raw, tmp_path, publish=True)
    met = out["metrics"]
    assert met["eff_zigzag_ring_2r_8192_fwdbwd"] == 1.0  # 8 / (2 x 4)
    assert met["eff_basic_ring_2r_8192_fwd"] == round(2.0 / 3.2, 3)
    assert met["speedup_zigzag_vs_basic_2r_8192_fwdbwd"] == 1.5
    assert met["speedup_ulysses_vs_deepspeed_2r_8192_fwdbwd"] == round(4.8 / 4.4, 3)
    assert met["eff_zigzag_ring_2r_8192_fwdbwd_cpu"] == 1.0
    assert met["frames_max_over_mean_token_2r_ratio"] == 2.0 and met["speedup_balanced_vs_token_2r"] == 1.5
    assert met["speedup_balanced_vs_token_2r_cpu"] == 2.0
    table = (tmp_path / "table.md").read_text()
    assert "| 2 | 8192 | zigzag_ring | 2.000 | 1.00 | 1.00 | 1.000 | 4.000 | 1.00 | 12 |" in table
    res = load_result(tmp_path / "sp-bench.json")
    assert res.benchmark == "sp_bench" and res.metrics["time_zigzag_ring_2r_8192_fwdbwd_s"] == 4.0
    assert load_result(tmp_path / "published" / "sp-bench.json").metrics == res.metrics


def test_cli_plan_explains_and_rejects_bad_input(capsys):
    from longvila.parallel.cli import main

    assert main(["plan", "--heads", "28", "--kv-heads", "4", "--gpus-per-node", "8", "--nodes", "4",
                 "--seq-len", "1048576"]) == 0
    out = capsys.readouterr().out
    assert "sp_ring=8 sp_ulysses=4" in out and "28 heads" in out
    with pytest.raises(SystemExit):
        main(["plan", "--heads", "6", "--kv-heads", "4", "--gpus-per-node", "2", "--seq-len", "8"])
    assert "kv_heads" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--out", "/tmp/x", "--worlds", "3"])
    assert "cannot split" in capsys.readouterr().err


def test_packed_bench_rows_sum_to_their_length_and_methods_agree(capsys):
    from longvila.parallel.bench_packed import packed_lengths
    from longvila.parallel.cli import main

    for total in (2, 100, 1000):
        lengths = packed_lengths(total, seed=3)
        assert sum(lengths) == total and min(lengths) > 0
    assert len(packed_lengths(1000, seed=3)) > 10  # a packed row: many samples
    assert main(["bench-packed", "--tokens", "200", "--reps", "1"]) == 0
    out = capsys.readouterr().out
    assert "| 200 (" in out and "masked SDPA" in out
    worst = float(out.rsplit("masked SDPA|", 1)[1].split(":")[1].split()[0])
    assert worst < 1e-5
    full, labelled = (float(x) for x in out.rsplit("\nloss ", 1)[1].split()[::2])
    assert abs(full - labelled) < 1e-5 and 1.0 < full < 10.0  # the same loss; a random model's CE over 824 tokens
    with pytest.raises(SystemExit):
        main(["bench-packed", "--tokens", "1x"])
    assert "--tokens" in capsys.readouterr().err


def test_public_api_resolves():
    import longvila.parallel as par

    assert all(callable(getattr(par, name)) for name in par.__all__)
    with pytest.raises(AttributeError):
        par.no_such_name  # noqa: B018


def test_logn_scale_is_one_up_to_base_then_log_ratio():
    from longvila.parallel.attention import logn_scale

    q = torch.ones(1, 2, 6, 3)
    pos = torch.tensor([[0, 5, 15, 16, 99, 1023]])
    got = logn_scale(q, pos, 16)[0, 1, :, 0]
    import math
    want = torch.tensor([1.0, 1.0, 1.0, math.log(17) / math.log(16), math.log(100) / math.log(16), 2.5])
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=">= 2 positions"):
        logn_scale(q, pos, 1)
    with pytest.raises(ValueError, match="6 queries"):
        logn_scale(q, pos[:, :4], 16)


def test_hf_logn_attention_equals_scaled_queries_in_prefill_packing_and_decode():
    """The registered attention with ``logn_attention_base`` set = SDPA on queries scaled by their position in
    their own packed sample; decoding against a cache gives the prefill's rows; base unset = plain attention."""
    import math
    import types

    from longvila.parallel.hf import sp_attention_forward

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 30, 8), torch.randn(1, 2, 30, 8), torch.randn(1, 2, 30, 8)
    pos = torch.cat([torch.arange(11), torch.arange(19)])[None]
    module = types.SimpleNamespace(config=types.SimpleNamespace(logn_attention_base=4))
    out, _ = sp_attention_forward(module, q, k, v, None, position_ids=pos)
    factor = torch.clamp(torch.log(pos.float() + 1) / math.log(4), min=1.0)[0]
    seg = torch.arange(30) - pos[0]
    mask = torch.ones(30, 30, dtype=torch.bool).tril() & (seg[:, None] == seg[None, :])
    ref = F.scaled_dot_product_attention(q * factor[None, None, :, None], k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(out, ref.transpose(1, 2), atol=2e-6, rtol=1e-5)
    plain, _ = sp_attention_forward(types.SimpleNamespace(config=types.SimpleNamespace()), q, k, v, None,
                                    position_ids=pos)
    assert not torch.allclose(plain, out, atol=1e-3)  # the scaling is really applied
    # one sample: the last 3 queries against the whole cache (decode) = the last 3 rows of the prefill
    full, _ = sp_attention_forward(module, q, k, v, None)
    dec, _ = sp_attention_forward(module, q[:, :, -3:], k, v, None)
    torch.testing.assert_close(dec, full[:, -3:], atol=2e-6, rtol=1e-5)


def test_hf_attention_runs_under_inference_mode_with_logn_positions():
    """The evaluations run under torch.inference_mode, where the log-n positions the layer makes (and any
    position_ids the caller made there) are inference tensors without a version counter: the plan is then
    made without the per-step cache, and the output equals the one outside inference mode."""
    import types

    from longvila.parallel.hf import sp_attention_forward

    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 30, 8), torch.randn(1, 2, 30, 8), torch.randn(1, 2, 30, 8)
    module = types.SimpleNamespace(config=types.SimpleNamespace(logn_attention_base=4))
    ref, _ = sp_attention_forward(module, q, k, v, None)
    ref_packed, _ = sp_attention_forward(module, q, k, v, None, position_ids=torch.arange(30)[None])
    with torch.inference_mode():
        got, _ = sp_attention_forward(module, q, k, v, None)
        pos = torch.arange(30)[None]
        packed = [sp_attention_forward(module, q, k, v, None, position_ids=pos)[0] for _ in range(2)]
    torch.testing.assert_close(got, ref, atol=0, rtol=0)
    for out in packed:
        torch.testing.assert_close(out, ref_packed, atol=0, rtol=0)
