"""Loader: packed batches with restarting positions, masks on non-assistant tokens, several workers, skips."""

import warnings

import numpy as np
import pytest
import torch

from longvila.data import loader, sets, shards
from longvila.data.video_io import read_frames

model = pytest.importorskip("longvila.model")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("loader")
    cfg = sets.BuildConfig()
    for name in ("align", "short_sft"):
        sc = cfg.set_config(name)
        sc.num_samples, sc.per_shard = 12, 3
    sets.build(cfg, out, sets=["align", "short_sft"], workers=1)
    return out


@pytest.fixture(scope="module")
def proc():
    return model.LongVILAProcessor.from_config(model.tiny_config())


def _all(it):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return list(it)


def test_batches_with_two_workers(data, proc):
    dirs = [data / "align", data / "short_sft"]
    cfg = loader.LoaderConfig(max_tokens=400, rows=2, num_frames=8)
    dl = torch.utils.data.DataLoader(loader.Loader(dirs, proc, cfg), batch_size=None, num_workers=2)
    batches = _all(dl)
    ids = [s for b in batches for row in b["sample_ids"] for s in row]
    assert sorted(ids) == sorted(f"{n}-{i:08d}" for n in ("align", "short_sft") for i in range(12))
    assert sum(b["num_skipped"] for b in batches) == 0
    records = {s["__key__"]: s for d in dirs for s in shards.iter_samples(d)}
    img_id = proc.settings.image_token_id
    tpf = proc.settings.tokens_per_frame
    for b in batches:
        B, L = b["input_ids"].shape
        assert b["labels"].shape == b["position_ids"].shape == b["attention_mask"].shape == (B, L) and B <= 2
        assert L <= 400
        assert int((b["input_ids"] == img_id).sum()) == b["pixel_values"].shape[0] * tpf
        assert int(b["num_frames"].sum()) == b["pixel_values"].shape[0]
        assert b["pixel_values"].shape[1:] == (3, 32, 32)
        lab = b["labels"]
        on = lab != -100
        assert torch.equal(lab[on], b["input_ids"][on])
        assert not (on & (b["input_ids"] == img_id)).any()
        assert not (on & (b["attention_mask"] == 0)).any()
        for r, row in enumerate(b["sample_ids"]):
            o = 0
            for sid in row:
                rec = records[sid]["json"]
                counts = [8 if m["type"] == "video" else 1 for m in rec["media"]]
                enc = proc.encode_conversation(rec["conversations"], counts)
                n = len(enc["input_ids"])
                assert torch.equal(b["position_ids"][r, o:o + n], torch.arange(n))
                assert torch.equal(b["input_ids"][r, o:o + n], enc["input_ids"])
                answers = proc.decode(b["input_ids"][r, o:o + n][on[r, o:o + n]])
                for turn in rec["conversations"][1::2]:
                    assert turn["value"] in answers
                o += n
            assert b["attention_mask"][r, o:].sum() == 0 and (b["position_ids"][r, o:] == torch.arange(L - o)).all()


def test_pixels_are_the_sampled_frames(data, proc):
    cfg = loader.LoaderConfig(max_tokens=10_000, rows=1, num_frames=5, kinds=("short_video_qa",))
    b = _all(loader.Loader([data / "short_sft"], proc, cfg))[0]
    first = b["sample_ids"][0][0]
    raw = next(s for s in shards.iter_samples(data / "short_sft") if s["__key__"] == first)
    ref = proc.preprocess_frames(read_frames(raw["mp4"], 5))
    assert torch.allclose(b["pixel_values"][:5], ref)
    assert b["num_frames"][0] == 5


def test_unusable_samples_are_counted_not_dropped_silently(data, proc):
    cfg = loader.LoaderConfig(max_tokens=10_000, num_frames=33, kinds=("short_video_qa",))  # videos have 8-32
    ds = loader.Loader([data / "short_sft"], proc, cfg)
    with pytest.warns(UserWarning, match=r"short_sft-\d+.*frames, 33 asked"):
        batches = list(ds)
    n_video = sum(s["json"]["kind"] == "short_video_qa" for s in shards.iter_samples(data / "short_sft"))
    assert n_video > 0 and batches == [] and sum(ds.skipped.values()) == n_video
    cfg = loader.LoaderConfig(max_tokens=20, num_frames=8)
    ds = loader.Loader([data / "align"], proc, cfg)
    with pytest.warns(UserWarning, match="longer than max_tokens 20"):
        assert list(ds) == []
    assert sum(ds.skipped.values()) == 12


def test_bad_loader_input(data, proc, tmp_path):
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        loader.Loader([tmp_path], proc)
    with pytest.raises(ValueError, match="rank 5 of 6 gets no shard"):
        loader.Loader([data / "align"], proc, rank=5, world_size=6)
    a = loader.Loader([data / "align"], proc, rank=0, world_size=2).urls
    b = loader.Loader([data / "align"], proc, rank=1, world_size=2).urls
    assert a and b and not set(a) & set(b)


def test_collate_pads_with_restarting_positions():
    s = lambda n, i: {"id": i, "input_ids": torch.arange(n) + 5, "labels": torch.arange(n) + 5,  # noqa: E731
                      "pixel_values": None, "num_frames": []}
    b = loader.collate_rows([[s(3, "a"), s(2, "b")], [s(4, "c")]], pad_id=0)
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 1, 2, 3, 0]]
    assert b["labels"][1, 4] == -100 and b["input_ids"][1, 4] == 0 and b["attention_mask"][1].tolist() == [1] * 4 + [0]
    assert b["pixel_values"] is None and b["sample_ids"] == [["a", "b"], ["c"]]
    assert np.array_equal(b["input_ids"][0].numpy(), [5, 6, 7, 5, 6])
