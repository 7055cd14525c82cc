"""Each builder: write then read back, and the read-back sample agrees with the world it came from."""

import io

import numpy as np
import pytest
from PIL import Image

from longvila.data import questions as Q
from longvila.data import sets, shards, world
from longvila.data.video_io import read_frames


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("sets")
    cfg = sets.BuildConfig()
    for name in sets.SET_NUMBER:
        sc = cfg.set_config(name)
        sc.num_samples, sc.per_shard = 6, 4
    cfg.pretrain.interleaved_frac = 0.5
    cfg.context_ext.min_tokens, cfg.context_ext.max_tokens = 600, 900
    cfg.long_sft.min_frames, cfg.long_sft.max_frames = 64, 200
    manifests = sets.build(cfg, out, workers=2)
    return cfg, out, manifests


def _samples(out, name):
    return list(shards.iter_samples(out / name))


def _check_conversation(rec):
    conv = rec["conversations"]
    assert conv and [t["from"] for t in conv] == ["human", "gpt"] * (len(conv) // 2)
    n_ph = sum(t["value"].count("<video>") + t["value"].count("<image>") for t in conv)
    assert n_ph == len(rec["media"])


def test_every_set_round_trips(built):
    cfg, out, manifests = built
    for name, m in manifests.items():
        got = _samples(out, name)
        assert len(got) == m["num_samples"] == 6, name
        assert [s["__key__"] for s in got] == sorted(m["samples"]) == [f"{name}-{i:08d}" for i in range(6)]
        for s in got:
            rec = s["json"]
            assert rec["id"] == s["__key__"] and rec["set"] == name
            _check_conversation(rec)
            for med in rec["media"]:
                assert med["ext"] in s, (name, med)


def test_images_match_the_world(built):
    cfg, out, _ = built
    kinds = set()
    for s in _samples(out, "align"):
        rec = s["json"]
        img = np.asarray(Image.open(io.BytesIO(s["jpg"])).convert("RGB"))
        if rec["events"][0]["kind"] == "code":  # a code card: its caption is its code, drawn with train digits
            code = rec["events"][0]["code"]
            assert len(rec["events"]) == 1 and len(code) == 3 and code.isdigit()
            assert rec["conversations"][1]["value"] == f"A card shows the code {code}."
            assert img[0].max() < 40 and img[16, 16:].max() > 200  # black frame, white paper
            kinds.add("code")
            continue
        ref = world.make_image(rec["seed"], "train").frames[0]
        assert np.abs(img.astype(int) - ref).mean() < 6
        assert rec["conversations"][1]["value"] == Q.caption_image(rec["events"])
        kinds.add("scene")
    assert kinds == {"code", "scene"}  # 6 samples at code_frac 0.5
    kinds = {s["json"]["kind"] for s in _samples(out, "pretrain")}
    assert kinds == {"image_caption", "interleaved"}


def test_short_videos_match_the_world_and_answers_are_exact(built):
    cfg, out, _ = built
    seen = set()
    for name in ("short_sft", "short_sft_eval"):
        for s in _samples(out, name):
            rec = s["json"]
            seen.add(rec["kind"])
            if rec["kind"] != "short_video_qa":
                continue
            n = rec["media"][0]["num_frames"]
            assert 8 <= n <= 32
            frames = read_frames(s["mp4"])
            code = next((e["code"] for e in rec["events"] if e["kind"] == "code"), None)
            ref = world.make_video(rec["seed"], n, rec["split"], code=code, digit_prob=0.35,
                                   code_frame=next((e["frame"] for e in rec["events"] if e["kind"] == "code"), None))
            # 4:2:0 chroma at 16x16 blurs saturated edges: ~2-6 levels of 255 on average, independent of crf
            assert frames.shape == ref.frames.shape and np.abs(frames.astype(int) - ref.frames).mean() < 7
            assert [e.to_dict() for e in ref.events] == rec["events"]
            if name == "short_sft_eval":
                assert rec["split"] == "eval" and rec["seed"] >= world.EVAL_SEED_BASE
                assert rec["answer"] and rec["type"] in sets.EXACT_TYPES
                assert rec["options"][("ABCD").index(rec["answer_letter"])].endswith(rec["answer"]) \
                    if rec["options"] else True
    assert {"image_qa", "short_video_qa"} <= seen


def test_context_ext_lengths_and_far_answer(built):
    cfg, out, _ = built
    try:
        from longvila.model import LongVILAProcessor, tiny_config

        proc = LongVILAProcessor.from_config(tiny_config())
    except ImportError:
        proc = None
    for s in _samples(out, "context_ext"):
        rec = s["json"]
        doc = rec["conversations"][1]["value"]
        assert 600 - 60 <= rec["num_tokens"] <= 900
        if proc is not None:  # the exact length the model sees
            assert len(proc.encode_conversation(rec["conversations"], [])["input_ids"]) == rec["num_tokens"]
        assert doc.endswith(f"Answer: {rec['answer']}")
        assert rec["answer_char_offset"] < len(doc) // 2, "the answer should sit far back"
        assert doc[rec["answer_char_offset"]:].startswith(f"remember the key {rec['answer']}")


def test_long_sft_made_from_clip_captions(built):
    cfg, out, _ = built
    for s in _samples(out, "long_sft"):
        rec = s["json"]
        n = rec["media"][0]["num_frames"]
        assert 64 <= n <= 200 and read_frames(s["mp4"]).shape[0] == n
        assert len(rec["clip_captions"]) == -(-n // cfg.long_sft.clip_frames)
        assert rec["clip_captions"] == [Q.caption_clip(rec["events"], a, b) for a, b in rec["clips"]]
        assert rec["qa"] == [q.to_dict() for q in Q.compose_questions(rec["clip_captions"], seed=rec["seed"])]
        codes = [e["code"] for e in rec["events"] if e["kind"] == "code"]
        qcode = [q for q in rec["qa"] if q["type"] == "code"]
        assert [q["answer"] for q in qcode] == codes


def _fake_captioner(frames, events):
    return f"A clip of {len(frames)} frames with {len(events)} events."


def test_long_sft_with_a_user_captioner():
    cfg = sets.BuildConfig()
    cfg.long_sft.min_frames, cfg.long_sft.max_frames = 70, 70
    s = sets.sample_long_sft(cfg, 0, captioner=_fake_captioner)
    caps = s["json"]["clip_captions"]
    assert caps[0] == f"A clip of 32 frames with {sum(e['frame'] < 32 for e in s['json']['events'])} events."
    assert caps[-1].startswith("A clip of 6 frames")
    assert {q["type"] for q in s["json"]["qa"]} == {"summary", "sub_event"}
    assert sets.load_captioner("json:dumps") is not None
    with pytest.raises(ValueError, match="no.such"):
        sets.load_captioner("no.such:fn")


def test_seeds_disjoint_across_sets_and_bad_names():
    cfg = sets.BuildConfig()
    ranges = {n: (sets.world_seed(cfg, n, 0), sets.world_seed(cfg, n, 999_999)) for n in sets.SET_NUMBER}
    spans = sorted(ranges.values())
    assert all(a[1] < b[0] for a, b in zip(spans, spans[1:], strict=False))
    with pytest.raises(ValueError, match="unknown set"):
        sets.build(cfg, "/tmp/unused", sets=["bogus"])
