"""Communication for sequence parallelism: process-group set-up, shape agreement, the ring's point-to-point
bookkeeping, and autograd-aware collectives.

Design choices:
- Every process group is created with a timeout (default 120 s, ``LONGVILA_DIST_TIMEOUT`` overrides), so a
  dead peer turns into an error, never a hang.
- ``agree_shapes`` all-gathers a small header (shape and dtype) before the first collective of an
  operation, so ranks that disagree fail with a message naming both shapes instead of deadlocking or
  exchanging garbage.
- Autograd collectives are our own ``torch.autograd.Function``s: all-to-all (backward = the reverse
  all-to-all) and all-gather (backward = reduce-scatter of the summed gradient). Incoming gradients are
  made contiguous first: gloo silently returns wrong results for non-contiguous buffers.
- ``RingComm`` posts ``batch_isend_irecv`` to the next / from the previous rank of a ring group and hands
  back a waitable handle, so the caller can start the next transfer before computing on the current block.
"""

from __future__ import annotations

import datetime as _dt
import os

import torch
import torch.distributed as dist

_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.int64, torch.int32, torch.bool]


def default_timeout_s() -> float:
    return float(os.environ.get("LONGVILA_DIST_TIMEOUT", "120"))


def init_distributed(backend: str = "gloo", timeout_s: float | None = None) -> tuple[int, int]:
    """Initialise the default process group from the torchrun environment (RANK, WORLD_SIZE, MASTER_*).

    Returns (rank, world_size); a no-op returning (0, 1) when not launched by torchrun.
    """
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" not in os.environ:
        return 0, 1
    timeout = _dt.timedelta(seconds=timeout_s or default_timeout_s())
    dist.init_process_group(backend=backend, timeout=timeout)
    return dist.get_rank(), dist.get_world_size()


def collective_device() -> torch.device:
    """Where small bookkeeping tensors of a collective must live: the rank's GPU under NCCL (which cannot
    reduce CPU tensors), else the CPU (gloo)."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def group_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)


def group_rank(group) -> int:
    return 0 if group is None else dist.get_rank(group)


def agree_shapes(x: torch.Tensor, group, what: str) -> None:
    """Check that every rank of ``group`` holds a tensor of the same shape and dtype (collective).

    Raises ValueError on every rank, naming the operation and the differing shapes.
    """
    n = group_size(group)
    if n == 1:
        return
    if x.dim() > 8:
        raise ValueError(f"{what}: tensors of more than 8 dims are not supported")
    header = torch.full((10,), -1, dtype=torch.int64, device=x.device)
    header[0] = _DTYPES.index(x.dtype) if x.dtype in _DTYPES else 99
    header[1] = x.dim()
    header[2 : 2 + x.dim()] = torch.tensor(x.shape, dtype=torch.int64, device=x.device)
    out = torch.empty(n * 10, dtype=torch.int64, device=x.device)
    dist.all_gather_single(out, header, group=group)
    rows = out.view(n, 10)
    if not bool((rows == rows[0]).all()):
        desc = []
        for i, row in enumerate(rows.tolist()):
            dt = _DTYPES[row[0]] if row[0] < len(_DTYPES) else "other"
            desc.append(f"rank {i}: {tuple(row[2 : 2 + row[1]])} {dt}")
        raise ValueError(f"{what}: ranks disagree on the tensor shape/dtype ({'; '.join(desc)})")


class RingComm:
    """Send to the next rank and receive from the previous rank of a ring ``group``."""

    def __init__(self, group):
        self.group = group
        self.size = group_size(group)
        self.rank = group_rank(group)
        if self.size > 1:
            self.next = dist.get_global_rank(group, (self.rank + 1) % self.size)
            self.prev = dist.get_global_rank(group, (self.rank - 1) % self.size)
        self._reqs: list = []

    def send_recv(self, send: list[torch.Tensor], tag: int = 0) -> list[torch.Tensor]:
        """Post sends of ``send`` to next and receives of same-shaped buffers from prev; returns the buffers
        (valid after ``wait()``)."""
        send = [t.contiguous() for t in send]
        recv = [torch.empty_like(t, memory_format=torch.contiguous_format) for t in send]
        ops = [dist.P2POp(dist.isend, t, self.next, self.group, tag + i) for i, t in enumerate(send)]
        ops += [dist.P2POp(dist.irecv, t, self.prev, self.group, tag + i) for i, t in enumerate(recv)]
        self._reqs += dist.batch_isend_irecv(ops)
        return recv

    def wait(self) -> None:
        for r in self._reqs:
            r.wait()
        self._reqs = []


def _all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    n = group_size(group)
    if n == 1:
        return x
    if x.shape[scatter_dim] % n:
        raise ValueError(f"all_to_all: dim {scatter_dim} of size {x.shape[scatter_dim]} not divisible by {n}")
    # (n, ...) with the scatter pieces on the leading dim, contiguous for all_to_all_single.
    send = torch.stack(torch.tensor_split(x, n, dim=scatter_dim)).contiguous()
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send, group=group)
    return torch.cat(recv.unbind(0), dim=gather_dim)


class _AllToAll(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, scatter_dim, gather_dim):
        ctx.group, ctx.dims = group, (scatter_dim, gather_dim)
        return _all_to_all(x, group, scatter_dim, gather_dim)

    @staticmethod
    def backward(ctx, grad):
        s, g = ctx.dims
        return _all_to_all(grad.contiguous(), ctx.group, g, s), None, None, None


def all_to_all(x: torch.Tensor, group, scatter_dim: int, gather_dim: int) -> torch.Tensor:
    """Autograd all-to-all: split ``x`` into n pieces along ``scatter_dim``, send piece i to rank i, and
    concatenate what arrives along ``gather_dim`` (in rank order). E.g. (B, H, S/n, D) with
    scatter_dim=1, gather_dim=2 -> (B, H/n, S, D)."""
    return _AllToAll.apply(x, group, scatter_dim, gather_dim)


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group, dim):
        ctx.group, ctx.dim = group, dim
        n = group_size(group)
        xs = x.movedim(dim, 0).contiguous()
        out = torch.empty((n * xs.shape[0], *xs.shape[1:]), dtype=x.dtype, device=x.device)
        dist.all_gather_single(out, xs, group=group)
        return out.movedim(0, dim)

    @staticmethod
    def backward(ctx, grad):
        n = group_size(ctx.group)
        g = grad.movedim(ctx.dim, 0).contiguous()  # NOTE: contiguous, see the module docstring
        out = torch.empty((g.shape[0] // n, *g.shape[1:]), dtype=g.dtype, device=g.device)
        dist.reduce_scatter_single(out, g, op=dist.ReduceOp.SUM, group=ctx.group)
        return out.movedim(0, ctx.dim), None, None


def all_gather(x: torch.Tensor, group, dim: int = 0) -> torch.Tensor:
    """Autograd all-gather: concatenate every rank's ``x`` along ``dim`` in rank order
    ((..., S, ...) -> (..., n*S, ...)); the gradient of each rank's input is the sum over ranks."""
    if group_size(group) == 1:
        return x
    return _AllGather.apply(x, group, dim)


def all_gather_varlen(x: torch.Tensor, group, dim: int = 0) -> torch.Tensor:
    """Autograd all-gather of tensors whose size along ``dim`` differs by rank (padded to the max, then
    stripped): returns the concatenation in rank order."""
    n = group_size(group)
    if n == 1:
        return x
    sizes = torch.empty(n, dtype=torch.int64, device=x.device)
    dist.all_gather_single(sizes, torch.tensor([x.shape[dim]], dtype=torch.int64, device=x.device), group=group)
    sizes = sizes.tolist()
    m = max(sizes)
    pad = [0, 0] * (x.dim() - 1 - (dim % x.dim())) + [0, m - x.shape[dim]]
    full = all_gather(torch.nn.functional.pad(x, pad), group, dim)
    idx = torch.cat([torch.arange(s) + i * m for i, s in enumerate(sizes)]).to(x.device)
    return full.index_select(dim, idx)


def _memory_order(t: torch.Tensor) -> list[int]:
    """The dims of ``t`` from the slowest to the fastest in memory: ``t.permute(order)`` is contiguous for a
    dense tensor (channels-last images too); the plain order for any other layout."""
    order = sorted(range(t.dim()), key=lambda i: (-t.stride(i), i))
    return order if t.permute(order).is_contiguous() else list(range(t.dim()))


def exchange(obj: dict, group) -> list[dict]:
    """Every rank's dict, in group rank order (collective): tensors travel as tensors, every other value as
    JSON (ints, strings, lists, None), so no rank unpickles what another sent. Returned tensors are on the
    CPU, as the data loader makes them. Lets the ranks of a sequence-parallel group build different
    micro-batches of one shared stream instead of each building the same one."""
    import json

    n = group_size(group)
    if n == 1:
        return [obj]
    dev = collective_device()
    ranks = dist.get_process_group_ranks(group)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for k, v in tensors.items():
        if v.dtype not in _DTYPES or v.dim() > 8:
            raise ValueError(f"exchange: field {k!r} ({v.dtype}, {v.dim()} dims) cannot travel")
    # each tensor travels in its memory order and is laid out again as the sender's (pixel values are built
    # channels-last; a contiguous copy takes other convolution kernels and changes the float rounding)
    perms = {k: _memory_order(v) for k, v in tensors.items()}
    header = json.dumps({"order": list(obj), "plain": {k: v for k, v in obj.items() if k not in tensors},
                         "tensors": {k: [_DTYPES.index(v.dtype), [v.shape[i] for i in perms[k]], perms[k]]
                                     for k, v in tensors.items()}})
    raw = torch.frombuffer(bytearray(header.encode()), dtype=torch.uint8).to(dev)
    text, at = bytes(all_gather_varlen(raw, group).cpu().tolist()).decode(), 0  # the n headers back to back
    me, out = group_rank(group), []
    for src in range(n):
        head, at = json.JSONDecoder().raw_decode(text, at)
        got = dict(head["plain"])
        for k, (dt, shape, perm) in head["tensors"].items():
            t = tensors[k].permute(perm).contiguous().to(dev) if src == me else torch.empty(
                shape, dtype=_DTYPES[dt], device=dev)
            dist.broadcast(t, src=ranks[src], group=group)
            got[k] = tensors[k] if src == me else t.cpu().permute(sorted(range(len(perm)), key=perm.__getitem__))
        out.append({k: got[k] for k in head["order"]})
    return out
