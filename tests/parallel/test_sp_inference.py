"""Sequence-parallel inference (sharded prefill, then greedy answer; teacher-forced scoring) against
stock one-process Hugging Face generation and forward."""

import pytest
import sp_workers
import torch

from longvila.parallel.hf import apply_sequence_parallel
from longvila.parallel.inference import sp_generate, sp_score
from longvila.parallel.launch import run_distributed


def test_one_rank_inference_matches_stock_generate():
    model, embeds, targets, gen, argmax, logp = sp_workers.inference_reference()
    apply_sequence_parallel(model)
    assert torch.equal(sp_generate(model.language_model, embeds, gen.shape[1]), gen)
    scored = sp_score(model.language_model, embeds, targets)
    assert torch.equal(scored["argmax"], argmax)
    torch.testing.assert_close(scored["logprob"], logp, atol=1e-5, rtol=1e-5)


@pytest.mark.dist
def test_sharded_prefill_inference_matches_one_process():
    res = run_distributed(sp_workers.inference_worker, 2, [(2, 1), (1, 2)], timeout=240, comm_timeout=60)
    for rank, r in enumerate(res):
        assert r == {"U2R1-inference": "ok", "U1R2-inference": "ok"}, f"rank {rank}: {r}"
