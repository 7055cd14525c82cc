"""Ingest: captions CSV/JSONL and LLaVA JSON into shards; every bad input is an error or a counted skip."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from longvila.data import ingest, shards, world
from longvila.data.video_io import encode_mp4, read_frames


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    good = world.make_video(1, 12).frames
    (d / "good.mp4").write_bytes(encode_mp4(good))
    (d / "good2.mp4").write_bytes(encode_mp4(world.make_video(2, 10).frames))
    (d / "short.mp4").write_bytes(encode_mp4(world.make_video(3, 4).frames))
    (d / "empty.mp4").write_bytes(b"")
    (d / "corrupt.mp4").write_bytes(encode_mp4(good)[:200])
    Image.fromarray(world.make_image(4).frames[0]).save(d / "still.png")
    Image.fromarray(world.make_image(5).frames[0]).save(d / "still2.jpg")
    return d


def _cfg(**kw):
    return ingest.IngestConfig(per_shard=2, min_frames=8, **kw)


def test_captions_csv_with_counted_skips(media, tmp_path):
    csv = tmp_path / "caps.csv"
    csv.write_text('video,caption\ngood.mp4,"A red circle, then a cut."\nshort.mp4,too short\n'
                   "empty.mp4,empty\ncorrupt.mp4,corrupt\nmissing.mp4,missing\ngood2.mp4,Second one.\n"
                   "good.mp4,   \n", encoding="utf-8")
    m = ingest.ingest(tmp_path / "out", _cfg(), videos=media, captions=csv)
    assert m["num_samples"] == 2
    assert m["skipped"] == {"corrupt video": 1, "empty caption": 1, "empty video": 1, "missing file": 1,
                            "shorter than 8 frames": 1}
    got = list(shards.iter_samples(tmp_path / "out/ingested"))
    assert [s["__key__"] for s in got] == ["ingested-00000000", "ingested-00000005"]
    assert got[0]["json"]["conversations"][1]["value"] == "A red circle, then a cut."
    assert got[0]["mp4"] == (media / "good.mp4").read_bytes()
    assert read_frames(got[1]["mp4"]).shape == (10, 32, 32, 3)


def test_captions_jsonl_and_file_level_errors(media, tmp_path):
    jl = tmp_path / "caps.jsonl"
    jl.write_text(json.dumps({"video": "good.mp4", "caption": "One."}) + "\n\n", encoding="utf-8")
    assert ingest.ingest(tmp_path / "o1", _cfg(), videos=media, captions=jl)["num_samples"] == 1
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"video": "good.mp4", "caption": "x"}\n{"video": "good.mp4", "captoin": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: unknown keys \['captoin'\]"):
        ingest.read_captions(bad)
    bad.write_text('{"video": "good.mp4", "caption": "x"\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:1: malformed JSON"):
        ingest.read_captions(bad)
    latin = tmp_path / "latin.csv"
    latin.write_bytes("video,caption\ngood.mp4,caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin.csv: not UTF-8"):
        ingest.read_captions(latin)
    cols = tmp_path / "cols.csv"
    cols.write_text("video,text\ngood.mp4,x\n")
    with pytest.raises(ValueError, match=r"cols.csv: header: unknown keys \['text'\]"):
        ingest.read_captions(cols)
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("video,caption\ngood.mp4\n")
    with pytest.raises(ValueError, match=r"ragged.csv:2: expected 2 columns"):
        ingest.read_captions(ragged)
    (tmp_path / "x.txt").write_text("a")
    with pytest.raises(ValueError, match=r"must be .csv or .jsonl, not .txt"):
        ingest.read_captions(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        ingest.read_captions(tmp_path / "nope.csv")


def test_csv_unterminated_quote_names_its_line_and_quoted_newlines_still_work(media, tmp_path):
    csv = tmp_path / "caps.csv"
    csv.write_text('video,caption\ngood.mp4,"two\nlines"\n\ngood2.mp4,fine\ngood.mp4,"never closes\n'
                   "good2.mp4,swallowed\n")
    with pytest.raises(ValueError, match=r"caps.csv:6: unterminated quote"):
        ingest.read_captions(csv)
    csv.write_text('video,caption\ngood.mp4,"two\nlines"\ngood2.mp4,"a"b\n')
    with pytest.raises(ValueError, match=r"caps.csv:4: malformed CSV"):
        ingest.read_captions(csv)
    csv.write_text('video,caption\ngood.mp4,"two\nlines"\n\ngood2.mp4,fine\n')
    assert ingest.read_captions(csv) == [{"video": "good.mp4", "caption": "two\nlines"},
                                         {"video": "good2.mp4", "caption": "fine"}]
    csv.write_text("")
    with pytest.raises(ValueError, match=r"caps.csv: header: missing keys"):
        ingest.read_captions(csv)


def test_default_min_frames_skips_a_3_frame_video(media, tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v/three.mp4").write_bytes(encode_mp4(world.make_video(6, 3).frames))
    (tmp_path / "v/eight.mp4").write_bytes(encode_mp4(world.make_video(7, 8).frames))
    csv = tmp_path / "caps.csv"
    csv.write_text("video,caption\nthree.mp4,Three frames.\neight.mp4,Eight frames.\n")
    m = ingest.ingest(tmp_path / "out", ingest.IngestConfig(), videos=tmp_path / "v", captions=csv)
    assert ingest.IngestConfig().min_frames == 8 and m["config"]["min_frames"] == 8
    assert m["num_samples"] == 1 and m["skipped"] == {"shorter than 8 frames": 1}
    r = subprocess.run([sys.executable, "-m", "longvila.cli", "data", "ingest", "--out", str(tmp_path / "o"),
                        "--videos", str(tmp_path / "v"), "--captions", str(csv)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "skipped 1: shorter than 8 frames: 1" in r.stdout, r.stderr


def test_llava_json(media, tmp_path):
    recs = [
        {"id": "v1", "video": "good.mp4", "conversations": [{"from": "human", "value": "<video>\nWhat?"},
                                                             {"from": "gpt", "value": "A scene."}]},
        {"id": "i1", "image": "still.png", "conversations": [{"from": "human", "value": "Color?"},
                                                             {"from": "gpt", "value": "red"}]},
        {"id": "i2", "image": ["still.png", "still2.jpg"],
         "conversations": [{"from": "human", "value": "<image>\n<image>\nSame?"}, {"from": "gpt", "value": "no"}]},
        {"id": "m1", "image": "gone.png", "conversations": [{"from": "human", "value": "?"}, {"from": "gpt", "value": "x"}]},
        {"id": "p1", "video": "good.mp4", "conversations": [{"from": "human", "value": "<video><video>?"},
                                                             {"from": "gpt", "value": "x"}]},
        {"id": "s1", "video": "short.mp4", "conversations": [{"from": "human", "value": "?"}, {"from": "gpt", "value": "x"}]},
    ]
    js = tmp_path / "llava.json"
    js.write_text(json.dumps(recs))
    m = ingest.ingest(tmp_path / "out", _cfg(name="mine"), llava=js, media_root=media)
    assert m["num_samples"] == 3
    assert m["skipped"] == {"missing file": 1, "placeholders do not match the media": 1, "shorter than 8 frames": 1}
    got = {s["json"]["source_id"]: s for s in shards.iter_samples(tmp_path / "out/mine")}
    assert got["i1"]["json"]["conversations"][0]["value"] == "<image>\nColor?"
    assert got["i1"]["png"] == (media / "still.png").read_bytes()
    assert [x["ext"] for x in got["i2"]["json"]["media"]] == ["0.png", "1.jpg"]
    assert got["v1"]["json"]["kind"] == "llava_video"
    recs[0]["split"] = "train"
    js.write_text(json.dumps(recs))
    with pytest.raises(ValueError, match=r"llava.json: record 0: unknown keys \['split'\]"):
        ingest.ingest(tmp_path / "o2", _cfg(), llava=js, media_root=media)
    m = ingest.ingest(tmp_path / "o3", _cfg(allow_extra_keys=True), llava=js, media_root=media)
    assert next(iter(shards.iter_samples(tmp_path / "o3/ingested")))["json"]["extra"] == {"split": "train"}
    js.write_text('[{"conversations": "hi"}]')
    with pytest.raises(ValueError, match="record 0: conversations must be"):
        ingest.read_llava(js)
    js.write_text("[{]")
    with pytest.raises(ValueError, match="llava.json: malformed JSON"):
        ingest.read_llava(js)


def test_ingested_set_loads(media, tmp_path):
    model = pytest.importorskip("longvila.model")
    from longvila.data import loader

    csv = tmp_path / "caps.csv"
    csv.write_text("video,caption\ngood.mp4,One.\ngood2.mp4,Two.\n")
    ingest.ingest(tmp_path, _cfg(), videos=media, captions=csv)
    proc = model.LongVILAProcessor.from_config(model.tiny_config())
    b = list(loader.Loader([tmp_path / "ingested"], proc, loader.LoaderConfig(num_frames=8, max_tokens=1000)))
    assert [s for bb in b for r in bb["sample_ids"] for s in r] == ["ingested-00000000", "ingested-00000001"]
    assert b[0]["pixel_values"].shape == (16, 3, 32, 32)


def test_cli_reports_skips(media, tmp_path):
    csv = tmp_path / "caps.csv"
    csv.write_text("video,caption\ngood.mp4,One.\nmissing.mp4,x\ncorrupt.mp4,y\n")
    r = subprocess.run([sys.executable, "-m", "longvila.cli", "data", "ingest", "--out", str(tmp_path / "o"),
                        "--videos", str(media), "--captions", str(csv), "--min-frames", "8"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "skipped 2: corrupt video: 1, missing file: 1" in r.stdout
    r = subprocess.run([sys.executable, "-m", "longvila.cli", "data", "verify", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "ok" in r.stdout
    bad = tmp_path / "bad.csv"
    bad.write_bytes(b"video,caption\n\xff\xfe\n")
    r = subprocess.run([sys.executable, "-m", "longvila.cli", "data", "ingest", "--out", str(tmp_path / "o"),
                        "--videos", str(media), "--captions", str(bad)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "bad.csv: not UTF-8" in r.stderr and "Traceback" not in r.stderr


def test_video_frame_counts(media):
    from longvila.data.video_io import VideoError, num_frames_of

    assert num_frames_of(media / "good.mp4") == 12
    with pytest.raises(VideoError, match="empty.mp4"):
        num_frames_of(media / "empty.mp4")
    assert np.asarray(Image.open(media / "still.png")).shape == (32, 32, 3)
