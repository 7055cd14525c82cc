"""Per-rank functions for the multi-process tests (module level so that spawned ranks can import them).

Each worker runs many checks in one process launch and returns {check name: "ok" or the failure text};
the tests assert on each entry.
"""

from __future__ import annotations

import traceback

import torch
import torch.distributed as dist
import torch.nn.functional as F
from longvila.parallel.attention import segment_ids_from_positions, sp_attention
from longvila.parallel.comm import all_gather, all_gather_varlen, all_to_all
from longvila.parallel.mesh import ParallelDims, build_mesh
from longvila.parallel.zigzag import padded_length, zigzag_index, zigzag_shard, zigzag_unshard

LAYOUTS = [(2, 1), (1, 2), (4, 1), (1, 4), (2, 2)]  # (sp_ulysses, sp_ring)


def _check(results: dict, name: str, fn) -> None:
    try:
        fn()
        results[name] = "ok"
    except Exception as e:  # noqa: BLE001 - reported to the test
        results[name] = f"{type(e).__name__}: {e}\n{traceback.format_exc()}"


def reference_attention(q, k, v, positions=None):
    """Causal (and same-sample) attention on the full sequence in one process, fp32 autograd."""
    s = q.shape[2]
    mask = torch.ones(s, s, dtype=torch.bool).tril()
    if positions is not None:
        seg = torch.arange(s) - positions
        mask = mask & (seg[:, None] == seg[None, :])
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)


def attention_case(mesh, b, h, hkv, s, d, dtype, packed, world):
    g = torch.Generator().manual_seed(1000 + s + h + hkv)
    q, k, v = (torch.randn(b, n, s, d, generator=g).to(dtype) for n in (h, hkv, hkv))
    dout = torch.randn(b, h, s, d, generator=g).to(dtype)
    positions = None
    if packed:  # three samples of uneven lengths, positions restart at 0
        cut = [s // 3, s // 3 + s // 4]
        positions = torch.cat([torch.arange(cut[0]), torch.arange(cut[1] - cut[0]), torch.arange(s - cut[1])])
    # the one-process reference in the same dtype (as PyTorch's context-parallel tests)
    qr, kr, vr = (t.clone().requires_grad_() for t in (q, k, v))
    out_ref = reference_attention(qr, kr, vr, positions)
    out_ref.backward(dout)
    # sharded run
    ql, kl, vl = (zigzag_shard(t, 2, mesh).detach().requires_grad_() for t in (q, k, v))
    seg = None
    if positions is not None:
        total = padded_length(s, mesh)
        pos_full = torch.cat([positions, positions[-1] + 1 + torch.arange(total - s)])
        seg = segment_ids_from_positions(zigzag_shard(pos_full, 0, mesh)[None], mesh, b)
    out = sp_attention(ql, kl, vl, mesh, seg)
    out.backward(zigzag_shard(dout, 2, mesh))
    valid = zigzag_index(padded_length(s, mesh), mesh) < s
    if dtype == torch.float32:
        tol = dict(atol=2e-6, rtol=1e-5)
    else:
        tol = dict(atol=8e-3 * world, rtol=1e-3 * world)
    torch.testing.assert_close(out[:, :, valid].float(), zigzag_shard(out_ref, 2, mesh)[:, :, valid].detach().float(), **tol)
    for name, got, ref in (("dq", ql.grad, qr.grad), ("dk", kl.grad, kr.grad), ("dv", vl.grad, vr.grad)):
        torch.testing.assert_close(got.float(), zigzag_shard(ref, 2, mesh).float(), **tol, msg=lambda m, n=name: f"{n}: {m}")


def attention_worker(rank: int, world: int) -> dict:
    results: dict[str, str] = {}
    for u, r in LAYOUTS:
        if world % (u * r):
            continue
        mesh = build_mesh(ParallelDims(dp=world // (u * r), sp_ulysses=u, sp_ring=r, world_size=world))
        tag = f"U{u}R{r}"
        _check(results, f"{tag}-fp32-gqa", lambda m=mesh: attention_case(m, 2, 4, 2, 64, 16, torch.float32, False, world))
        _check(results, f"{tag}-fp32-mha-uneven", lambda m=mesh: attention_case(m, 1, 4, 4, 37, 8, torch.float32, False, world))
        _check(results, f"{tag}-fp32-gqa-packed", lambda m=mesh: attention_case(m, 1, 4, 2, 53, 8, torch.float32, True, world))
        _check(results, f"{tag}-fp32-mqa", lambda m=mesh: attention_case(m, 1, 4, 1, 40, 8, torch.float32, False, world))
        _check(results, f"{tag}-bf16-gqa", lambda m=mesh: attention_case(m, 1, 4, 2, 64, 16, torch.bfloat16, False, world))
        _check(results, f"{tag}-roundtrip", lambda m=mesh: roundtrip_case(m))
    _check(results, "collectives", lambda: collectives_case(world))
    return results


def roundtrip_case(mesh):
    x = torch.arange(2 * 41 * 3, dtype=torch.float32).view(2, 41, 3)
    local = zigzag_shard(x, 1, mesh)
    assert local.shape[1] == padded_length(41, mesh) // mesh.sp_size
    torch.testing.assert_close(zigzag_unshard(local, 1, mesh, length=41), x, atol=0, rtol=0)
    # every rank holds a distinct set of positions that together cover the padded sequence
    idx = torch.cat([zigzag_index(padded_length(41, mesh), mesh, p) for p in range(mesh.sp_size)])
    assert sorted(idx.tolist()) == list(range(padded_length(41, mesh)))


def _grad_for(shape, seed):
    """A dense but non-contiguous incoming gradient (permuted layout), the case gloo got wrong."""
    g = torch.randn(tuple(reversed(shape)), generator=torch.Generator().manual_seed(seed))
    return g.permute(*reversed(range(len(shape))))


def collectives_case(world: int):
    """Backward of every autograd collective against one-process autograd on the same global maths."""
    rank = dist.get_rank()
    xs = [torch.randn(3, 4 * world, 5, generator=torch.Generator().manual_seed(p)) for p in range(world)]

    def check(name, dist_fn, ref_fn):
        ref_x = [x.clone().requires_grad_() for x in xs]
        outs = ref_fn(ref_x)
        sum((o * _grad_for(o.shape, 100 + p)) .sum() for p, o in enumerate(outs)).backward()
        x = xs[rank].clone().requires_grad_()
        out = dist_fn(x)
        torch.testing.assert_close(out, outs[rank].detach(), atol=0, rtol=0, msg=lambda m: f"{name} forward: {m}")
        g = _grad_for(out.shape, 100 + rank)
        assert not g.is_contiguous()
        (out * g).sum().backward()
        torch.testing.assert_close(x.grad, ref_x[rank].grad, msg=lambda m: f"{name} backward: {m}")

    world_group = dist.group.WORLD
    check("all_gather", lambda x: all_gather(x, world_group, 1), lambda rx: [torch.cat(rx, 1)] * world)
    check("all_to_all", lambda x: all_to_all(x, world_group, 1, 2),
          lambda rx: [torch.cat([t.tensor_split(world, 1)[p] for t in rx], 2) for p in range(world)])
    check("all_gather_varlen", lambda x: all_gather_varlen(x[: 1 + rank % 2], world_group, 0),
          lambda rx: [torch.cat([t[: 1 + p % 2] for p, t in enumerate(rx)], 0)] * world)
