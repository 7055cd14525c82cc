"""Batches for the stages: frame sampling keeps needles, dp streams are disjoint, packing, needle samples."""

import numpy as np
import pytest
import torch

from longvila.pipelines import datasource as ds


def test_frame_indices_uniform_and_moved_onto_the_needle():
    idx = ds.frame_indices(100, 10)
    assert len(idx) == 10 and idx[0] == 0 and idx[-1] == 99
    assert list(ds.frame_indices(5, 10)) == [0, 1, 2, 3, 4]
    card = [{"kind": "code", "frame": 42, "end_frame": 42}]
    got = ds.frame_indices(100, 10, card)
    assert 42 in got and len(got) == 10
    assert 42 not in ds.frame_indices(100, 10, [{"kind": "appear", "frame": 42}])


def test_rank_streams_are_disjoint_within_an_epoch_and_cover_it():
    n, dp = 10, 2
    a = ds.rank_order(n, seed=3, dp_rank=0, dp=dp, start=0, count=5)
    b = ds.rank_order(n, seed=3, dp_rank=1, dp=dp, start=0, count=5)
    assert sorted(a + b) == list(range(n))
    # random access: a later start gives the same positions as the stream read from 0
    assert ds.rank_order(n, 3, 0, dp, 2, 6) == ds.rank_order(n, 3, 0, dp, 0, 8)[2:]
    assert ds.rank_order(n, 4, 0, dp, 0, 5) != a


def test_pack_restarts_positions_and_keeps_frame_order():
    items = [{"input_ids": torch.arange(3), "labels": torch.arange(3), "pixel_values": torch.zeros(2, 3, 4, 4),
              "num_frames": [2], "id": "a"},
             {"input_ids": torch.arange(4) + 10, "labels": torch.arange(4), "pixel_values": None,
              "num_frames": [], "id": "b"},
             {"input_ids": torch.arange(2), "labels": torch.arange(2), "pixel_values": torch.ones(1, 3, 4, 4),
              "num_frames": [1], "id": "c"}]
    b = ds.pack(items)
    assert b["input_ids"].shape == (1, 9)
    assert b["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0, 1]]
    assert b["pixel_values"].shape == (3, 3, 4, 4) and b["pixel_values"][2].eq(1).all()
    assert b["num_frames"] == [2, 1] and b["sample_ids"] == ["a", "b", "c"]
    assert "loss_weights" not in b  # "token": the plain mean, no weights needed


def test_loss_weighting_gives_each_sample_n_to_the_minus_p():
    a = torch.tensor([-100, -100, 5, 6, 7, 8])  # 4 answer tokens
    b = torch.tensor([-100, 9])  # 1 answer token
    items = [{"input_ids": torch.zeros_like(x), "labels": x, "pixel_values": None, "num_frames": [], "id": str(i)}
             for i, x in enumerate((a, b))]
    for weighting, wa, wb in (("square", 0.5, 1.0), ("sample", 0.25, 1.0)):
        w = ds.pack(items, weighting)["loss_weights"][0]
        assert w.tolist() == [0, 0, wa, wa, wa, wa, 0, wb], weighting
        # a sample's share of the loss: n * n^-p
        assert w[:6].sum() / w.sum() == pytest.approx(4 * wa / (4 * wa + wb))
    assert ds.loss_weights(torch.full((3,), -100), "square").tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="loss weighting 'mean'"):
        ds.loss_weights(a, "mean")


@pytest.fixture(scope="module")
def pool():
    from longvila.data.video_io import encode_mp4
    from longvila.data.world import make_video

    v = make_video(5, 40, "train")
    return ({"__key__": "v0", "mp4": encode_mp4(v.frames, v.fps), "json": {"conversations": []}},)


def test_needle_sample_has_the_card_and_the_code_as_answer(pool):
    from longvila.model import LongVILAProcessor, tiny_config

    proc = LongVILAProcessor.from_config(tiny_config())
    s = ds.needle_sample(pool, 64, np.random.default_rng(0), proc)
    assert s["num_frames"] == [65] and s["pixel_values"].shape == (65, 3, 32, 32)
    code = s["id"].split("-")[1]
    assert len(code) == 3 and code.isdigit()
    answer = proc.decode(s["labels"][s["labels"] != -100].tolist())
    assert answer.strip().startswith(code)
    assert int((s["input_ids"] == proc.settings.image_token_id).sum()) == 65
    # the card is the one bright (white paper) frame among the dim world frames
    at = int(s["id"].split("-")[2].split("of")[0])
    brightness = s["pixel_values"].mean(dim=(1, 2, 3))
    assert int(brightness.argmax()) == at


def test_one_frame_needle_takes_frame_zero_from_the_first_frame_cache(pool):
    from longvila.data.video_io import read_frames
    from longvila.model import LongVILAProcessor, tiny_config

    proc = LongVILAProcessor.from_config(tiny_config())
    first = read_frames(pool[0]["mp4"])[:1]
    assert np.array_equal(ds._first_frame(pool[0]["mp4"]), first)
    s = ds.needle_sample(pool, 1, np.random.default_rng(3), proc)
    at = int(s["id"].split("-")[2].split("of")[0])
    assert s["num_frames"] == [2]
    assert torch.equal(s["pixel_values"][1 - at], proc.preprocess_frames(first)[0])


def test_pick_turns_keeps_pairs_in_order_and_the_placeholder_first():
    conv = []
    for i in range(5):
        conv += [{"from": "human", "value": ("<video>\n" if i == 0 else "") + f"Q{i}"},
                 {"from": "gpt", "value": f"A{i}"}]
    for seed in range(6):
        out = ds.pick_turns(conv, 2, np.random.default_rng(seed))
        assert len(out) == 4 and out[0]["value"].startswith("<video>\n")
        qs = [int(t["value"].split("Q")[1]) for t in out[0::2]]
        assert qs == sorted(qs) and len(set(qs)) == 2
        assert [t["value"] for t in out[1::2]] == [f"A{q}" for q in qs]  # answers stay with their questions
        assert sum(t["value"].count("<video>") for t in out) == 1
    assert ds.pick_turns(conv, 0, np.random.default_rng(0)) == conv


def test_needle_sample_multiple_choice_form_answers_the_letter_of_the_code(pool):
    from longvila.model import LongVILAProcessor, tiny_config

    proc = LongVILAProcessor.from_config(tiny_config())
    seen = 0
    for seed in range(6):
        s = ds.needle_sample(pool, 16, np.random.default_rng(seed), proc, mc_frac=1.0)
        code = s["id"].split("-")[1]
        text = proc.decode(s["input_ids"].tolist())
        answer = proc.decode(s["labels"][s["labels"] != -100].tolist()).strip()
        options = [line for line in text.splitlines() if line[:3] in ("A. ", "B. ", "C. ", "D. ")]
        assert len(options) == 4 and "The best answer is:" in text
        letter = answer[0]
        assert letter in "ABCD" and f"{letter}. {code}" in options  # the answer's option is the card's code
        assert sum(o.endswith(f". {code}") for o in options) == 1  # and no distractor repeats it
        seen += 1
    assert seen == 6
    s = ds.needle_sample(pool, 16, np.random.default_rng(0), proc, mc_frac=0.0)
    assert "The best answer is:" not in proc.decode(s["input_ids"].tolist())


def test_card_sample_is_a_fresh_card_captioned_or_asked_as_multiple_choice():
    """A fresh card sample: one card frame (the white paper), its code in the align caption form, or in the
    four-option form answered with the letter of the card's code; a new rendering every draw; handwriting at
    hand_frac."""
    from longvila.data import world
    from longvila.model import LongVILAProcessor, tiny_config

    proc = LongVILAProcessor.from_config(tiny_config())
    s = ds.card_sample(np.random.default_rng(0), proc, 32)
    code = s["id"].split("-")[1]
    assert s["num_frames"] == [1] and s["pixel_values"].shape == (1, 3, 32, 32)
    assert proc.decode(s["labels"][s["labels"] != -100].tolist()).strip().startswith(f"A card shows the code {code}.")
    assert "Describe the image." in proc.decode(s["input_ids"].tolist())
    assert s["pixel_values"].mean() > 0.2  # white paper (pixels normalised to [-1, 1]; world frames are dim, < -0.2)
    # the pixels are the card of that code drawn from the same stream
    rng = np.random.default_rng(0)
    rng.integers(0, 10, 3)
    style = "hand" if rng.random() < 0.5 else "print"
    want = proc.preprocess_frames(world.code_image(code, "train", rng, 32, 32, style)[None])
    assert torch.equal(s["pixel_values"], want)
    for seed in range(4):
        m = ds.card_sample(np.random.default_rng(seed), proc, 32, mc_frac=1.0)
        code = m["id"].split("-")[1]
        text = proc.decode(m["input_ids"].tolist())
        letter = proc.decode(m["labels"][m["labels"] != -100].tolist()).strip()[0]
        assert "The best answer is:" in text and f"{letter}. {code}" in text.splitlines()
    frames = [ds.card_sample(np.random.default_rng(seed), proc, 32, hand_frac=h)["pixel_values"]
              for h in (0.0, 1.0) for seed in range(2)]
    assert not torch.equal(frames[0], frames[1])  # fresh renderings
    # handwriting (hand_frac=1) and print (0) of the same stream differ
    assert not torch.equal(frames[0], frames[2])


def test_stream_adds_fresh_cards_to_each_batch(tmp_path):
    from longvila.data import sets
    from longvila.model import LongVILAProcessor, tiny_config
    from longvila.pipelines.config import Phase

    cfg = sets.BuildConfig()
    cfg.align.num_samples, cfg.align.per_shard = 8, 8
    sets.build(cfg, tmp_path, sets=("align",), workers=1)
    proc = LongVILAProcessor.from_config(tiny_config())
    it = ds.stream(tmp_path, ("align",), Phase(1, 8, 1), seed=0, skip=0, dp_rank=0, dp=1, seq_len=256,
                   processor=proc, cards=3)
    for _ in range(3):
        b = next(it)
        cards = [i for i in b["sample_ids"] if i.startswith("card-")]
        assert len(cards) == 3 and len(b["sample_ids"]) == 8 + 3
        assert b["pixel_values"].shape[0] == 8 + 3 and b["num_frames"] == [1] * 11


def test_a_phase_own_mix_replaces_the_stage_one(tmp_path):
    from longvila.data import sets
    from longvila.model import LongVILAProcessor, tiny_config
    from longvila.pipelines.config import Phase

    cfg = sets.BuildConfig()
    cfg.short_sft.num_samples, cfg.short_sft.per_shard = 8, 8
    sets.build(cfg, tmp_path, sets=("short_sft",), workers=1)
    proc = LongVILAProcessor.from_config(tiny_config())
    kw = dict(seed=0, skip=0, dp_rank=0, dp=1, seq_len=256, processor=proc, cards=3, needle_frac=0.0)
    # every sample a needle, every needle and fresh card asked with four options, 2 cards instead of 3
    own = next(ds.stream(tmp_path, ("short_sft",), Phase(4, 4, 1, needle_frac=1.0, needle_mc_frac=1.0, cards=2), **kw))
    ids = own["sample_ids"]
    assert len(ids) == 6 and sum(i.startswith("needle-") for i in ids) == 4
    assert sum(i.startswith("card-") for i in ids) == 2
    text = proc.decode(own["input_ids"][0].tolist(), skip_special_tokens=False)
    assert text.count("The best answer is:") == 6
    # the cards' own share: open captions beside four-option needles
    split = next(ds.stream(tmp_path, ("short_sft",), Phase(4, 4, 1, needle_frac=1.0, needle_mc_frac=1.0,
                                                          cards_mc_frac=0.0), **kw))
    text = proc.decode(split["input_ids"][0].tolist(), skip_special_tokens=False)
    assert text.count("The best answer is:") == 4 and text.count(ds.card_caption("")[:12]) == 3
    # unset fields keep the stage's: 3 captioned cards, no needles
    stage = next(ds.stream(tmp_path, ("short_sft",), Phase(4, 4, 1), **kw))["sample_ids"]
    assert sum(i.startswith("card-") for i in stage) == 3 and not any(i.startswith("needle-") for i in stage)

    # close distractors for the phase alone: every option one or two digits from its sample's code
    def options_near(batch) -> bool:
        text = proc.decode(batch["input_ids"][0].tolist(), skip_special_tokens=False)
        codes = [i.split("-")[1] for i in batch["sample_ids"]]
        blocks = text.split("What is the secret code shown in the video?")[1:]
        assert len(blocks) == len(codes) == 6
        return all(sum(x != y for x, y in zip(line[3:6], code, strict=True)) <= 2
                   for code, block in zip(codes, blocks, strict=True) for line in block.split("\n")[1:5])

    near = Phase(4, 4, 1, needle_frac=1.0, needle_mc_frac=1.0, cards=2, code_near_frac=1.0)
    assert options_near(next(ds.stream(tmp_path, ("short_sft",), near, **kw)))
    assert not options_near(own)  # the reversed and random codes
    assert options_near(next(ds.stream(tmp_path, ("short_sft",), Phase(4, 4, 1, needle_frac=1.0, needle_mc_frac=1.0,
                                                                        cards=2), **kw, code_near_frac=1.0)))


def test_reask_asks_the_sets_questions_afresh_in_either_form(tmp_path):
    from longvila.data import questions as Q
    from longvila.data import sets
    from longvila.eval.prompts import option_text
    from longvila.model import LongVILAProcessor, tiny_config
    from longvila.pipelines.config import Phase

    cfg = sets.BuildConfig()
    cfg.short_sft.num_samples, cfg.short_sft.per_shard = 12, 12
    sets.build(cfg, tmp_path, sets=("short_sft",), workers=1)
    pool = ds.load_pool(str(tmp_path), ("short_sft",))
    rng = np.random.default_rng(0)
    asked, letters = 0, []
    for s in pool:
        rec = s["json"]
        by_q = {q["question"]: q for q in rec["qa"] if q.get("options")}
        conv = rec["conversations"]
        mc, op = ds.reask(conv, rec["qa"], rng, 1.0), ds.reask(conv, rec["qa"], rng, 0.0)
        assert len(mc) == len(op) == len(conv)
        assert mc[0]["value"].split("\n")[0] == conv[0]["value"].split("\n")[0]  # the placeholder leads
        for i in range(0, len(conv), 2):
            body = mc[i]["value"].removeprefix("<video>\n").removeprefix("<image>\n")
            lines = body.split("\n")
            if lines[0] != Q.MC_HEADER:  # a question without four options (the caption) is left as it was
                assert conv[i + 1]["value"] == mc[i + 1]["value"] == op[i + 1]["value"]
                continue
            qa = by_q[lines[1]]
            asked += 1
            chosen = option_text(lines[2 + Q.LETTERS.index(mc[i + 1]["value"])])
            assert chosen == option_text(qa["options"][Q.LETTERS.index(qa["answer_letter"])])
            letters.append(mc[i + 1]["value"])
            assert op[i]["value"].endswith(qa["question"]) and op[i + 1]["value"] == qa["answer"]
    assert asked >= 6 and len(set(letters)) >= 3  # options in a new order: the answer moves between letters
    # in a stream: every question with options asked in the four-option form
    proc = LongVILAProcessor.from_config(tiny_config())
    b = next(ds.stream(tmp_path, ("short_sft",), Phase(4, 6, 1, qa_mc_frac=1.0), seed=0, skip=0, dp_rank=0, dp=1,
                       seq_len=256, processor=proc))
    text = proc.decode(b["input_ids"][0].tolist(), skip_special_tokens=False)
    letters = [proc.decode([t]) for t, lab in zip(b["input_ids"][0].tolist(), b["labels"][0].tolist(), strict=True)
               if lab != -100]
    assert text.count("The best answer is:") >= 3 and sum(x.strip() in Q.LETTERS for x in letters) >= 3


def test_mc_text_sample_asks_about_the_written_description_and_answers_its_letter():
    from longvila.data import questions as Q
    from longvila.data.world import make_image
    from longvila.model import LongVILAProcessor, tiny_config

    proc = LongVILAProcessor.from_config(tiny_config())
    im = make_image(11, "train")
    qas = [q for q in Q.image_questions(im.events, seed=11) if q.options]
    rec = {"id": "img", "kind": "image_qa", "conversations": [], "events": [e.to_dict() for e in im.events],
           "qa": [q.to_dict() for q in qas]}
    pool = ({"__key__": "img", "json": rec}, {"__key__": "v", "json": {"kind": "long_video_sft", "conversations": []}})
    letters = set()
    for seed in range(12):
        s = ds.mc_text_sample(pool, np.random.default_rng(seed), proc)
        assert s["pixel_values"] is None and s["num_frames"] == []
        text = proc.decode(s["input_ids"].tolist())
        assert Q.caption_image(im.events) in text and Q.MC_HEADER in text
        qa = qas[int(s["id"].rsplit("-", 1)[1])]
        assert qa.question in text
        letter = proc.decode(s["labels"][s["labels"] != -100].tolist()).strip()
        assert letter in Q.LETTERS
        # the letter's option line carries the right answer, whatever order the options were shuffled into
        assert f"\n{letter}. {qa.answer}\n" in text
        letters.add(letter)
    assert len(letters) >= 3  # options are reshuffled: the answer is not always at one letter
    with pytest.raises(ValueError, match="four-option questions"):
        ds.mc_text_sample(pool[1:], np.random.default_rng(0), proc)


def test_batches_move_to_the_model_device_and_collectives_stay_on_cpu_without_nccl():
    from longvila.parallel.comm import collective_device
    from longvila.pipelines.stages import to_model_device

    batch = ds.pack([{"input_ids": torch.arange(3), "labels": torch.arange(3), "pixel_values": torch.zeros(1, 3, 4, 4),
                      "num_frames": [1], "id": "a"}], "square")
    batch["skipped"] = 0
    on_meta = to_model_device(batch, torch.nn.Linear(2, 2, device="meta"))  # stands in for the rank's GPU
    for k in ("input_ids", "labels", "position_ids", "pixel_values", "loss_weights"):
        assert on_meta[k].device.type == "meta" and on_meta[k].shape == batch[k].shape, k
    assert on_meta["sample_ids"] == ["a"] and on_meta["skipped"] == 0
    same = to_model_device(batch, torch.nn.Linear(2, 2))
    assert all(same[k] is batch[k] for k in batch)  # already on the CPU: nothing copied
    assert collective_device().type == "cpu"  # no process group (or gloo): bookkeeping tensors on the CPU


def test_pointer_sample_asks_which_option_says_w_and_labels_the_letter_alone():
    from longvila.data import questions as Q
    from longvila.model import LongVILAProcessor, tiny_config

    proc = LongVILAProcessor.from_config(tiny_config())
    words = ds.pointer_words()
    assert len(words) == len(set(words)) >= 30 and all(w.isalpha() for w in words)
    letters = set()
    for seed in range(16):
        s = ds.pointer_sample(np.random.default_rng(seed), proc, words)
        text = proc.decode(s["input_ids"].tolist(), skip_special_tokens=False)
        assert Q.MC_HEADER in text and text.count("The best answer is:") == 1
        w = text.split("Which option is ", 1)[1].split("?", 1)[0]
        opts = [line for line in text.splitlines() if len(line) > 3 and line[1:3] == ". " and line[0] in Q.LETTERS]
        assert [o[0] for o in opts] == list(Q.LETTERS) and len({o[3:] for o in opts}) == 4
        labelled = s["labels"][s["labels"] != -100].tolist()
        assert len(labelled) == 1  # the letter; the end-of-turn token is not a label
        letter = proc.decode(labelled).strip()
        assert f"{letter}. {w}" in opts
        letters.add(letter)
    assert letters == set(Q.LETTERS)
    with pytest.raises(ValueError, match="at least 4"):
        ds.pointer_sample(np.random.default_rng(0), proc, ("red", "blue", "green"))


def test_option_texts_are_the_distinct_answers_of_four_option_questions():
    pool = ({"json": {"qa": [{"options": ["A. a red circle", "B. top left", "C. 471", "D. a red circle"]}]}},
            {"json": {"qa": [{"question": "open", "answer": "x"}]}}, {"json": {}})
    assert ds.option_texts(pool) == ("471", "a red circle", "top left")


def test_stream_pointer_phase_replaces_that_share_of_each_batch(tmp_path):
    from longvila.data import sets
    from longvila.model import LongVILAProcessor, tiny_config
    from longvila.pipelines.config import Phase

    cfg = sets.BuildConfig()
    cfg.short_sft.num_samples, cfg.short_sft.per_shard = 8, 8
    sets.build(cfg, tmp_path, sets=("short_sft",), workers=1)
    proc = LongVILAProcessor.from_config(tiny_config())
    it = ds.stream(tmp_path, ("short_sft",), Phase(8, 8, 1, pointer=0.5), seed=0, skip=0, dp_rank=0, dp=1,
                   seq_len=256, processor=proc, pointer_text_frac=1.0)
    texts = set(ds.option_texts(ds.load_pool(str(tmp_path), ("short_sft",))))
    for _ in range(2):
        b = next(it)
        ptr = [i for i in b["sample_ids"] if i.startswith("pointer-")]
        assert len(ptr) == 4 and len(b["sample_ids"]) == 8
        assert all(i.split("-", 2)[2] in texts for i in ptr)  # the asked option is one of the set's texts
    full = next(ds.stream(tmp_path, ("short_sft",), Phase(8, 6, 1, pointer=1.0), seed=0, skip=0, dp_rank=0, dp=1,
                          seq_len=256, processor=proc))
    assert len(full["sample_ids"]) == 6 and all(i.startswith("pointer-") for i in full["sample_ids"])
    assert full["pixel_values"] is None and all(i.split("-", 2)[2] in ds.pointer_words() for i in full["sample_ids"])


def test_stream_adds_pointers_in_the_phase_form_and_no_cards_to_a_text_only_phase(tmp_path):
    from longvila.data import sets
    from longvila.model import LongVILAProcessor, tiny_config
    from longvila.pipelines.config import Phase

    cfg = sets.BuildConfig()
    cfg.short_sft.num_samples, cfg.short_sft.per_shard = 8, 8
    sets.build(cfg, tmp_path, sets=("short_sft",), workers=1)
    proc = LongVILAProcessor.from_config(tiny_config())
    kw = dict(seed=0, skip=0, dp_rank=0, dp=1, seq_len=256, processor=proc)
    b = next(ds.stream(tmp_path, ("short_sft",), Phase(8, 4, 1), pointers=2, cards=1, **kw))
    ids = b["sample_ids"]
    assert len(ids) == 7 and sum(i.startswith("pointer-") for i in ids) == 2  # 4 set samples, 2 pointers, 1 card
    assert sum(i.startswith("card-") for i in ids) == 1
    one = next(ds.stream(tmp_path, ("short_sft",), Phase(0, 3, 1, pointer=1.0, form="oneline"), cards=4, **kw))
    assert len(one["sample_ids"]) == 3 and one["pixel_values"] is None  # text-only phase: no cards
    text = proc.decode(one["input_ids"][0].tolist(), skip_special_tokens=False)
    assert text.count("which option is ") == 3 and "<|im_start|>" not in text and "\n" not in text
    assert int((one["labels"] != -100).sum()) == 3  # one letter per question
    # nor needle videos: stage 5's needle share (0.5) must not ask a text-only phase for 0-frame needles
    nd = next(ds.stream(tmp_path, ("short_sft",), Phase(0, 4, 1, pointer=1.0), cards=6, needle_frac=0.5, **kw))
    assert len(nd["sample_ids"]) == 4 and nd["pixel_values"] is None
    assert all(i.startswith("pointer-") for i in nd["sample_ids"])
    with pytest.raises(ValueError, match="choose one of videomme, no-header, oneline"):
        ds.pointer_sample(np.random.default_rng(0), proc, ds.pointer_words(), "chat")


def test_pointer_qa_scores_the_letter_of_each_held_out_question():
    """The held-out pointer evaluation: an oracle that reads the prompt scores 100%, a model that always
    answers "A" scores the share of A answers (about chance), and the questions are the same on every call."""
    import types

    from longvila.data import questions as Q
    from longvila.model import LongVILAForCausalLM, LongVILAProcessor, tiny_config
    from longvila.pipelines.evaluate import pointer_qa

    model = LongVILAForCausalLM(tiny_config())
    proc = LongVILAProcessor.from_config(model.config)
    letter_ids = {c: proc.tokenizer.convert_tokens_to_ids(c) for c in Q.LETTERS}
    asked = []

    def oracle(input_ids, **kw):
        text = proc.decode(input_ids[0].tolist())
        asked.append(text)
        w = text.split("Which option is ", 1)[1].split("?", 1)[0]
        letter = next(c for c in Q.LETTERS if f"\n{c}. {w}\n" in text)
        logits = torch.zeros(1, input_ids.shape[1], model.config.text_config.vocab_size)
        logits[0, -1, letter_ids[letter]] = 1.0
        return types.SimpleNamespace(logits=logits)

    ctx = types.SimpleNamespace(rank=0, world=1, mesh=None)
    model.forward = oracle
    got = pointer_qa(model, None, 40, ctx)
    assert got["words"] == 1.0 and got["chance"] == 0.25 and "options" not in got
    assert all(t.rstrip().endswith("The best answer is:<|im_end|>\n<|im_start|>assistant") or
               t.rstrip().endswith("assistant") for t in asked)
    first = list(asked)
    asked.clear()

    def always_a(input_ids, **kw):
        asked.append(proc.decode(input_ids[0].tolist()))
        logits = torch.zeros(1, input_ids.shape[1], model.config.text_config.vocab_size)
        logits[0, -1, letter_ids["A"]] = 1.0
        return types.SimpleNamespace(logits=logits)

    model.forward = always_a
    got = pointer_qa(model, None, 40, ctx)
    assert asked == first  # the same held-out questions every time
    share_a = sum(1 for t in asked if f"\nA. {t.split('Which option is ', 1)[1].split('?', 1)[0]}\n" in t) / 40
    assert got["words"] == pytest.approx(share_a) and 0.05 < share_a < 0.5


def test_four_option_code_questions_in_each_form():
    """Needles and fresh cards asked with four options in a phase's form: the chat prompt as written, without
    its instruction line, or one plain line (no chat template) whose only label is the letter; a card's pixels
    and its code do not depend on the form."""
    from longvila.data import questions as Q
    from longvila.model import LongVILAProcessor, tiny_config

    proc = LongVILAProcessor.from_config(tiny_config())
    for seed in range(3):
        chat, bare, one = (ds.card_sample(np.random.default_rng(seed), proc, 32, mc_frac=1.0, form=f)
                           for f in ("videomme", "no-header", "oneline"))
        assert chat["id"] == bare["id"] == one["id"]
        assert torch.equal(chat["pixel_values"], one["pixel_values"])
        code = chat["id"].split("-")[1]
        letter = proc.decode(chat["labels"][chat["labels"] != -100].tolist()).strip()
        text = proc.decode(one["input_ids"].tolist(), skip_special_tokens=False)
        assert "\n" not in text and "<|im_start|>" not in text and Q.MC_HEADER not in text
        assert f"{letter}. {code}" in text and text.endswith(f" {letter}")
        assert proc.decode(one["labels"][one["labels"] != -100].tolist()) == f" {letter}"
        assert int((one["input_ids"] == proc.settings.image_token_id).sum()) == proc.settings.tokens_per_frame
        assert Q.MC_HEADER in proc.decode(chat["input_ids"].tolist())
        assert Q.MC_HEADER not in proc.decode(bare["input_ids"].tolist())
        assert "The best answer is:" in proc.decode(bare["input_ids"].tolist())
    # an open question keeps the chat prompt in any form; an unknown form is an error naming the choices
    open_q = ds.encode_question(proc, "<video>", Q.MC_HEADER.split(".")[0], "471", [2], "oneline")
    assert "<|im_start|>" in proc.decode(open_q["input_ids"].tolist(), skip_special_tokens=False)
    with pytest.raises(ValueError, match="question form 'chat': choose one of videomme, no-header, oneline"):
        ds.encode_question(proc, "<video>", "q", "a", [2], "chat")


def test_close_distractors_are_one_digit_away_and_the_centre_is_no_cue():
    """``near_frac``: four-option code questions over codes one digit apart (the repeated-digit misreadings among
    them), around a centre that is the code only a quarter of the time."""
    from longvila.data.world import random_code

    def dist(a: str, b: str) -> int:
        return sum(x != y for x, y in zip(a, b, strict=True))

    assert {"477", "444", "774", "434"} <= ds.near_codes("474", np.random.default_rng(0))
    assert all(dist(c, "474") == 1 for c in ds.near_codes("474", np.random.default_rng(0)))
    assert len(ds.near_codes("777", np.random.default_rng(0))) == 3  # no other digit of its own: one random per place

    rng = np.random.default_rng(1)
    n, centre_right, far = 800, 0, 0
    for _ in range(n):
        code = random_code(rng, 3, 0.5)
        q, letter = ds.code_question(code, rng, 1.0, near_frac=1.0)
        opts = [line[3:] for line in q.splitlines() if line[:3] in ("A. ", "B. ", "C. ", "D. ")]
        assert len(set(opts)) == 4 and opts["ABCD".index(letter)] == code
        assert all(dist(o, code) <= 2 for o in opts)
        far += sum(dist(o, code) == 2 for o in opts)
        centre = min(opts, key=lambda o: sum(dist(o, p) for p in opts))
        centre_right += centre == code
    assert 0.15 < centre_right / n < 0.35 and far > 0  # picking the most central option is about chance
    # and the random-distractor form mostly differs in more than one place
    q, _ = ds.code_question("123", np.random.default_rng(2), 1.0)
    assert any(dist(line[3:], "123") > 1 for line in q.splitlines() if line[:3] in ("B. ", "C. ", "D. ", "A. "))


def test_prefetch_yields_the_items_in_order_then_stops():
    got = list(ds.Prefetch(iter(range(50)), depth=3))
    assert got == list(range(50))
    with pytest.raises(ValueError, match="depth must be at least 1"):
        ds.Prefetch(iter(()), depth=0)


def test_prefetch_raises_the_builders_error_where_it_is_reached():
    def items():
        yield from (0, 1, 2)
        raise RuntimeError("shard 3 is corrupt")

    it = ds.Prefetch(items(), depth=2)
    assert [next(it), next(it), next(it)] == [0, 1, 2]
    for _ in range(2):  # and again on every later call, as a plain generator that ended would not
        with pytest.raises(RuntimeError, match="shard 3 is corrupt"):
            next(it)


def test_prefetch_builds_ahead_and_close_stops_the_thread():
    import time

    built = []

    def items():
        for i in range(10**6):
            built.append(i)
            yield i

    it = ds.Prefetch(items(), depth=2)
    assert next(it) == 0
    deadline = time.time() + 10
    while len(built) < 4 and time.time() < deadline:  # the item handed over, two queued, one waiting to be
        time.sleep(0.01)
    time.sleep(0.2)
    assert 3 <= len(built) <= 4  # ahead by the depth, not without bound
    it.close()
    it._thread.join(timeout=5)
    assert not it._thread.is_alive() and len(built) <= 4
    for _ in range(2):  # what was queued before the close, then a clear refusal
        assert next(it) in (1, 2)
    with pytest.raises(RuntimeError, match="closed Prefetch"):
        next(it)


def test_a_process_exits_cleanly_while_its_prefetching_thread_is_building():
    import subprocess
    import sys

    # the thread is inside torch's C++ kernels most of the time; left running as a daemon into the interpreter's
    # finalisation that aborts the process ("terminate called without an active exception", exit -6)
    code = ("import torch\nfrom longvila.pipelines.datasource import Prefetch\n"
            "def items():\n    while True:\n        x = torch.randn(300, 300)\n"
            "        for _ in range(30):\n            x = torch.tanh(x @ x)\n        yield float(x[0, 0])\n"
            "it = Prefetch(items(), 2)\nnext(it)\nprint('ok')\n")
    for _ in range(3):
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
