"""Distributed failures end every rank quickly with a clear message."""

import pytest
import sp_workers

from longvila.parallel.launch import run_distributed

pytestmark = pytest.mark.dist


def test_a_raising_rank_ends_all_ranks_with_its_message():
    # comm_timeout is long: only the parent ending rank 0 (blocked in all_reduce) makes this return early
    with pytest.raises(RuntimeError, match="rank 1 failed: ValueError: deliberate failure on rank 1"):
        run_distributed(sp_workers.raising_worker, 2, timeout=60, comm_timeout=600)


def test_disagreeing_shapes_fail_on_every_rank_before_the_ring():
    out = run_distributed(sp_workers.disagreeing_worker, 2, timeout=120, comm_timeout=60)
    for msg in out:
        assert "ranks disagree" in msg and "(1, 2, 8, 4)" in msg and "(1, 2, 10, 4)" in msg
