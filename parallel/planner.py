"""Choose the 2D attention layout (Ulysses degree U, ring degree R) for a cluster and a model.

The rule (LongVILA's 2D attention):
1. Use every GPU for sequence parallelism: SP degree = gpus_per_node x nodes (dp = 1; data parallelism
   is added on top by the caller when the sequence is short).
2. Ulysses inside a node, where all-to-all runs on fast links: U = the largest divisor of gpus_per_node
   that the heads allow (num_heads % U == 0, and KV heads either split, kv % U == 0, or replicate,
   U % kv == 0).
3. Ring across nodes and over whatever Ulysses could not take: R = SP / U (ring has no head limit but pays
   one latency per step, so it goes over the slow links, overlapped with compute).
Lengths are padded to a multiple of 2 x SP (zigzag chunks); the plan reports the padding.
"""

from __future__ import annotations

from dataclasses import dataclass

from .mesh import ParallelDims


@dataclass(frozen=True)
class Plan:
    dims: ParallelDims
    tokens_per_rank: int
    padding: int
    explanation: list[str]

    def __str__(self) -> str:
        d = self.dims
        head = f"layout: dp={d.dp} sp_ring={d.sp_ring} sp_ulysses={d.sp_ulysses} (SP degree {d.sp})"
        return "\n".join([head, *[f"- {line}" for line in self.explanation]])


def _heads_allow(u: int, heads: int, kv_heads: int) -> bool:
    return heads % u == 0 and (kv_heads % u == 0 or u % kv_heads == 0)


def plan_layout(heads: int, kv_heads: int, gpus_per_node: int, nodes: int, seq_len: int) -> Plan:
    """(heads, KV heads, GPUs per node, nodes, sequence length) -> Plan with (U, R) and the reasons."""
    for name, v in (("heads", heads), ("kv_heads", kv_heads), ("gpus_per_node", gpus_per_node),
                    ("nodes", nodes), ("seq_len", seq_len)):
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if heads % kv_heads:
        raise ValueError(f"heads={heads} is not a multiple of kv_heads={kv_heads}")
    sp = gpus_per_node * nodes
    u = max(d for d in range(1, gpus_per_node + 1) if gpus_per_node % d == 0 and _heads_allow(d, heads, kv_heads))
    r = sp // u
    why = [f"SP degree {sp} = {gpus_per_node} GPUs/node x {nodes} node(s)"]
    if u == gpus_per_node:
        why.append(f"Ulysses U={u} fills each node (all-to-all on intra-node links); {heads} heads / {u} = "
                   f"{heads // u} per rank")
    else:
        why.append(f"Ulysses U={u}: the largest divisor of {gpus_per_node} allowed by {heads} heads and "
                   f"{kv_heads} KV heads; the rest of the node goes to the ring")
    if u > kv_heads:
        why.append(f"KV heads replicated x{u // kv_heads} before the all-to-all ({kv_heads} KV heads < U={u})")
    why.append(f"ring R={r} over {'nodes (point to point, overlapped with compute)' if nodes > 1 else 'the node'}"
               if r > 1 else "no ring needed (R=1)")
    padded = -(-seq_len // (2 * sp)) * 2 * sp
    why.append(f"{seq_len} tokens -> {padded // sp} per rank (zigzag: 2 x {sp} chunks, padding {padded - seq_len})")
    return Plan(ParallelDims(1, u, r, sp), padded // sp, padded - seq_len, why)
