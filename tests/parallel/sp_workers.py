"""Per-rank functions for the multi-process tests (module level so that spawned ranks can import them).

Each worker runs many checks in one process launch and returns {check name: "ok" or the failure text};
the tests assert on each entry.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from longvila.parallel.attention import segment_ids_from_positions, sp_attention
from longvila.parallel.comm import all_gather, all_gather_varlen, all_to_all
from longvila.parallel.mesh import ParallelDims, build_mesh
from longvila.parallel.zigzag import padded_length, zigzag_index, zigzag_shard, zigzag_unshard

LAYOUTS = [(2, 1), (1, 2), (4, 1), (1, 4), (2, 2)]  # (sp_ulysses, sp_ring)


def _check(results: dict, name: str, fn) -> None:
    """Run one check; a failure ends this rank (and, through run_distributed, every rank) naming the check,
    since the other ranks may be waiting in a collective the failing rank will never join."""
    try:
        fn()
    except Exception as e:
        raise RuntimeError(f"check {name} failed: {type(e).__name__}: {e}") from e
    results[name] = "ok"


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


# ---- whole-model equivalence (MM-SP step) -------------------------------------------------------------

def tiny_vlm(logn_base: int = 0):
    from longvila.model import LongVILAForCausalLM, tiny_config

    torch.manual_seed(0)
    config = tiny_config()
    if logn_base:  # log-n attention scaling from this many positions (most tokens of the test batch are past it)
        config.text_config.logn_attention_base = logn_base
    return LongVILAForCausalLM(config).float()


def video_batch(model, packed: bool, seed: int = 0, weighted: bool = False) -> dict:
    """A video-heavy batch: frames as <image> runs (1 token each) inside random text; labels on the answers;
    ``weighted``: random per-token loss weights too."""
    g = torch.Generator().manual_seed(seed)
    img = model.config.image_token_id

    def sample(n_frames, n_text):
        ids = torch.cat([torch.randint(20, 400, (3,), generator=g), torch.full((n_frames,), img),
                         torch.randint(20, 400, (n_text,), generator=g)])
        labels = torch.full_like(ids, -100)
        labels[-n_text // 2 :] = ids[-n_text // 2 :]
        return ids, labels

    if packed:
        parts = [sample(7, 12), sample(4, 9), sample(2, 6)]
        ids = torch.cat([p[0] for p in parts])[None]
        labels = torch.cat([p[1] for p in parts])[None]
        pos = torch.cat([torch.arange(len(p[0])) for p in parts])[None]
        n_frames = 13
    else:
        parts = [sample(5, 14), sample(5, 14)]
        ids = torch.stack([p[0] for p in parts])
        labels = torch.stack([p[1] for p in parts])
        pos = torch.arange(ids.shape[1]).expand(2, -1)
        n_frames = 10
    s = model.config.image_size
    batch = {"input_ids": ids, "labels": labels, "position_ids": pos,
             "pixel_values": torch.randn(n_frames, 3, s, s, generator=g)}
    if weighted:
        batch["loss_weights"] = torch.rand(ids.shape, generator=g) * 3 * (labels != -100)
    return batch


def weighted_mean_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Written out: sum over targets of w * CE / sum of w, the target of token t being label t+1."""
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                           ignore_index=-100, reduction="none")
    w = weights[:, 1:].reshape(-1) * (labels[:, 1:].reshape(-1) != -100)
    return (ce * w).sum() / w.sum()


def reference_step(packed: bool, logn_base: int = 0, weighted: bool = False) -> tuple[torch.Tensor, dict]:
    """One process: the VLM's own forward (loss inside, or the weighted mean written out), SP attention on a
    one-rank mesh for packing."""
    from longvila.parallel.hf import apply_sequence_parallel

    model = tiny_vlm(logn_base)
    apply_sequence_parallel(model)
    batch = video_batch(model, packed, weighted=weighted)
    weights = batch.pop("loss_weights", None)
    out = model(**batch)
    loss = out.loss if weights is None else weighted_mean_ce(out.logits, batch["labels"], weights)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def mmsp_worker(rank: int, world: int, layouts: list) -> dict:
    from longvila.parallel.hf import apply_sequence_parallel
    from longvila.parallel.mmsp import mmsp_forward, reduce_sp_gradients

    results: dict[str, str] = {}
    # (packed, log-n base, loss weights, LM head at labelled positions only): log-n scaling depends on each
    # token's global position in its own sample
    variants = ((False, 0, False, False), (True, 0, False, False), (True, 6, False, False), (True, 0, True, False),
                (False, 0, False, True), (True, 0, True, True))
    refs = {v[:3]: reference_step(*v[:3]) for v in variants}
    for u, r in layouts:
        mesh = build_mesh(ParallelDims(dp=world // (u * r), sp_ulysses=u, sp_ring=r, world_size=world))
        for packed, logn, weighted, labelled in variants:
            def case(mesh=mesh, packed=packed, logn=logn, weighted=weighted, labelled=labelled):
                model = tiny_vlm(logn)
                apply_sequence_parallel(model, mesh)
                out = mmsp_forward(model, video_batch(model, packed, weighted=weighted), mesh,
                                   labelled_logits=labelled)
                if labelled:  # the head ran at this shard's labelled positions alone
                    assert out.logits.shape[1] == out.targets.shape[1] == int((out.targets != -100).any(0).sum())
                out.loss.backward()
                reduce_sp_gradients(model, mesh)
                total = out.loss.detach().clone()
                dist.all_reduce(total, group=mesh.sp_group)
                ref_loss, ref_grads = refs[(packed, logn, weighted)]
                torch.testing.assert_close(total, ref_loss, atol=1e-6, rtol=1e-5)
                grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
                assert grads.keys() == ref_grads.keys(), sorted(set(grads) ^ set(ref_grads))
                for n, g in grads.items():
                    torch.testing.assert_close(g, ref_grads[n], atol=2e-6, rtol=1e-4, msg=lambda m, n=n: f"{n}: {m}")
                # frames spread evenly over the SP group
                counts = torch.tensor([out.frames_encoded])
                allc = [torch.zeros_like(counts) for _ in range(mesh.sp_size)]
                dist.all_gather(allc, counts, group=mesh.sp_group)
                assert max(allc).item() - min(allc).item() <= 1, allc
            _check(results, f"U{u}R{r}-{'packed' if packed else 'batch2'}{'-logn' if logn else ''}"
                            f"{'-weighted' if weighted else ''}{'-labelled' if labelled else ''}", case)
    return results


# ---- failures ----------------------------------------------------------------------------------------

def raising_worker(rank: int, world: int) -> None:
    """Rank 1 raises while rank 0 waits in a collective that rank 1 will never join."""
    if rank == 1:
        raise ValueError("deliberate failure on rank 1")
    dist.all_reduce(torch.ones(1))


def disagreeing_worker(rank: int, world: int) -> None:
    """Ranks pass differently shaped shards to sp_attention: every rank must get a clear error."""
    mesh = build_mesh(ParallelDims(1, 1, world, world))
    s = 8 if rank == 0 else 10
    q = torch.randn(1, 2, s, 4)
    try:
        sp_attention(q, q, q, mesh)
    except ValueError as e:
        return str(e)
    return "no error"


# ---- inference -----------------------------------------------------------------------------------------

def inference_reference(length: int = 45, new: int = 6):
    """One process, stock HF (sdpa): greedy generation and teacher-forced argmax / log-probs."""
    model = tiny_vlm().eval()
    llm = model.language_model
    g = torch.Generator().manual_seed(7)
    embeds = torch.randn(1, length, llm.config.hidden_size, generator=g) * 0.5
    targets = torch.randint(20, 400, (1, length), generator=g)
    targets[:, : length // 2] = -100
    with torch.no_grad():
        gen = llm.generate(inputs_embeds=embeds, max_new_tokens=new, do_sample=False, min_new_tokens=new)
        logits = llm(inputs_embeds=embeds).logits
    logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    return model, embeds, targets, gen, logits.argmax(-1), logp.masked_fill(targets == -100, 0.0)


def inference_worker(rank: int, world: int, layouts: list) -> dict:
    from longvila.parallel.hf import apply_sequence_parallel
    from longvila.parallel.inference import sp_generate, sp_score

    results: dict[str, str] = {}
    model, embeds, targets, gen, argmax, logp = inference_reference()
    for u, r in layouts:
        mesh = build_mesh(ParallelDims(dp=world // (u * r), sp_ulysses=u, sp_ring=r, world_size=world))
        apply_sequence_parallel(model, mesh)

        def case(mesh=mesh):
            got = sp_generate(model.language_model, embeds, gen.shape[1], mesh)
            assert torch.equal(got, gen), (got, gen)
            scored = sp_score(model.language_model, embeds, targets, mesh)
            assert torch.equal(scored["argmax"], argmax)
            torch.testing.assert_close(scored["logprob"], logp, atol=1e-5, rtol=1e-5)
        _check(results, f"U{u}R{r}-inference", case)
    return results


def mmsp_and_inference_worker(rank: int, world: int, layouts: list, inference_layouts: list) -> dict:
    """Both checks in one launch (process start-up is the expensive part here)."""
    return {**mmsp_worker(rank, world, layouts), **inference_worker(rank, world, inference_layouts)}


def exchange_worker(rank: int, world: int) -> list:
    """Each rank sends tensors of its own shapes and plain values; returns what it received, as lists."""
    from longvila.parallel.comm import exchange

    img = (torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5) + rank).to(
        memory_format=torch.channels_last)
    obj = {"ids": torch.arange(rank + 3)[None], "pix": torch.full((rank + 1, 2), rank + 0.5), "none": None,
           "names": [f"r{rank}"] * (rank + 1), "n": rank, "img": img}
    got = exchange(obj, dist.group.WORLD)
    return [[(k, v.dtype, v.tolist(), v.stride()) if isinstance(v, torch.Tensor) else (k, v) for k, v in g.items()]
            for g in got]


def shared_stream_worker(rank: int, world: int, data_root: str) -> list:
    """The shared stream of the group against one rank's own stream of the same phase: equal batches."""
    from longvila.model import LongVILAProcessor, tiny_config
    from longvila.pipelines import datasource as ds
    from longvila.pipelines.config import Phase

    proc = LongVILAProcessor.from_config(tiny_config())

    def make(start, stride):
        return ds.stream(data_root, ("short_sft",), Phase(4, 3, 1), seed=7, skip=start, stride=stride, dp_rank=0,
                         dp=1, seq_len=256, processor=proc, needle_frac=0.4, cards=1, code_repeat_frac=0.5)

    # also with each rank's share built ahead in a background thread (``data.prefetch``, the trainer's default)
    shared, ahead = ds.shared_stream(make, 3, dist.group.WORLD), ds.shared_stream(make, 3, dist.group.WORLD, 2)
    own, out = make(3, 1), []
    for _ in range(5):
        a, c, b = next(shared), next(ahead), next(own)
        # the same values in the same memory layout (pixel values are channels-last: a contiguous copy would
        # take other convolution kernels and round differently)
        same = all(x.keys() == b.keys() and all(
            torch.equal(x[k], b[k]) and x[k].stride() == b[k].stride() if isinstance(b[k], torch.Tensor)
            else x[k] == b[k] for k in b) for x in (a, c))
        out.append((same, a["sample_ids"]))
    return out
