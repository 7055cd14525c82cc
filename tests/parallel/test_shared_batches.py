"""The ranks of an SP group build their shared micro-batches once between them (``datasource.shared_stream``
over ``comm.exchange``) and train on the same batches as when each built all of them."""

import pytest
import sp_workers

from longvila.parallel.launch import run_distributed

pytestmark = pytest.mark.dist


def test_exchange_hands_every_rank_all_dicts_in_rank_order():
    import torch

    out = run_distributed(sp_workers.exchange_worker, 3, timeout=120)
    for got in out:  # every rank the same list, sender r's values as r sent them
        assert len(got) == 3
        for r, fields in enumerate(got):
            d = dict((f[0], f[1:]) for f in fields)
            assert [f[0] for f in fields] == ["ids", "pix", "none", "names", "n", "img"]
            assert d["ids"] == (torch.int64, [list(range(r + 3))], (r + 3, 1))
            assert d["pix"] == (torch.float32, [[r + 0.5] * 2] * (r + 1), (2, 1))
            img = torch.arange(120, dtype=torch.float32).view(2, 3, 4, 5) + r
            assert d["img"] == (torch.float32, img.tolist(), (60, 1, 15, 3))  # channels-last as sent
            assert d["none"] == (None,) and d["names"] == ([f"r{r}"] * (r + 1),) and d["n"] == (r,)


def test_shared_stream_yields_the_batches_each_rank_would_build(tmp_path):
    from longvila.data import sets

    cfg = sets.BuildConfig()
    cfg.short_sft.num_samples, cfg.short_sft.per_shard = 12, 12
    sets.build(cfg, tmp_path, sets=("short_sft",), workers=1)
    out = run_distributed(sp_workers.shared_stream_worker, 2, str(tmp_path), timeout=240)
    assert all(same for rank in out for same, _ in rank)
    assert [ids for _, ids in out[0]] == [ids for _, ids in out[1]]  # both ranks train on the same batches
    assert len({tuple(ids) for _, ids in out[0]}) == 5  # and they move on


@pytest.mark.slow
def test_batch_bench_times_each_way_side_by_side(tmp_path, capsys):
    from longvila.data import sets
    from longvila.pipelines import bench_batches

    cfg = sets.BuildConfig()
    for s in (cfg.short_sft, cfg.long_sft):
        s.num_samples, s.per_shard = 4, 4
    cfg.long_sft.min_frames = cfg.long_sft.max_frames = 120
    sets.build(cfg, tmp_path / "data", sets=("short_sft", "long_sft"), workers=1)
    assert bench_batches.main(["--data", str(tmp_path / "data"), "--batches", "2", "--warm", "1", "--out",
                               str(tmp_path / "b.json")]) == 0
    text = capsys.readouterr().out
    assert "shared over the SP group" in text and "no first-frame cache" in text
    import json

    table = json.loads((tmp_path / "b.json").read_text())["seconds_per_micro_batch"]
    assert set(table) == set(bench_batches.PHASES)
    for name, row in table.items():
        assert all(0 < s < 600 for s in row.values())
        assert ("every rank builds all, no first-frame cache" in row) == name.startswith("1 frame")
