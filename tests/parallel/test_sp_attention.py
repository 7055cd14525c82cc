"""Sequence-parallel attention on 2 and 4 gloo ranks, every layout, against one-process SDPA."""

import pytest
import sp_workers

from longvila.parallel.launch import run_distributed

pytestmark = pytest.mark.dist

CASES = ["fp32-gqa", "fp32-mha-uneven", "fp32-gqa-packed", "fp32-mqa", "bf16-gqa", "roundtrip"]


@pytest.fixture(scope="module")
def results():
    return {w: run_distributed(sp_workers.attention_worker, w, timeout=240, comm_timeout=60) for w in (2, 4)}


@pytest.mark.parametrize("world,u,r", [(2, 2, 1), (2, 1, 2), (4, 2, 1), (4, 1, 2), (4, 4, 1), (4, 1, 4), (4, 2, 2)])
@pytest.mark.parametrize("case", CASES)
def test_attention_matches_one_process(results, world, u, r, case):
    for rank, res in enumerate(results[world]):
        assert res[f"U{u}R{r}-{case}"] == "ok", f"rank {rank}: {res[f'U{u}R{r}-{case}']}"


@pytest.mark.parametrize("world", [2, 4])
def test_collective_backward_matches_autograd(results, world):
    for rank, res in enumerate(results[world]):
        assert res["collectives"] == "ok", f"rank {rank}: {res['collectives']}"
