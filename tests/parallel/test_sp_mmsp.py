"""Whole-model equivalence: one MM-SP forward + backward of the tiny VLM on 2 and 4 ranks gives the
one-process loss and the one-process gradient of every parameter (also with log-n attention scaling and
with per-token loss weights, and with the LM head run at the labelled positions alone)."""

import pytest
import sp_workers

from longvila.parallel.launch import run_distributed

pytestmark = pytest.mark.dist

LAYOUTS = {2: [(2, 1), (1, 2)], 4: [(2, 2), (1, 4), (4, 1)]}


@pytest.fixture(scope="module")
def results():
    # the 4-rank launch also checks 2D (U2 x R2) sequence-parallel inference against one process
    return {
        2: run_distributed(sp_workers.mmsp_worker, 2, LAYOUTS[2], timeout=300, comm_timeout=60),
        4: run_distributed(sp_workers.mmsp_and_inference_worker, 4, LAYOUTS[4], [(2, 2)], timeout=300,
                           comm_timeout=60),
    }


@pytest.mark.parametrize("world,u,r", [(w, u, r) for w, ls in LAYOUTS.items() for u, r in ls])
@pytest.mark.parametrize("batch", ["batch2", "packed", "packed-logn", "packed-weighted", "batch2-labelled",
                                   "packed-weighted-labelled"])
def test_mmsp_step_matches_one_process(results, world, u, r, batch):
    for rank, res in enumerate(results[world]):
        assert res[f"U{u}R{r}-{batch}"] == "ok", f"rank {rank}: {res[f'U{u}R{r}-{batch}']}"


def test_2d_sequence_parallel_inference_on_4_ranks(results):
    for rank, res in enumerate(results[4]):
        assert res["U2R2-inference"] == "ok", f"rank {rank}: {res['U2R2-inference']}"
