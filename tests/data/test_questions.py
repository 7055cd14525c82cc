"""Captions and composed questions: sentences parse back to their events, answers agree with the log."""

from collections import Counter

import pytest

from longvila.data import questions as Q
from longvila.data import world


@pytest.fixture(scope="module")
def video():
    return world.make_video(21, 400, code="538", digit_prob=0.4)


def test_sentences_parse_back_to_their_events(video):
    n = 0
    for e in video.events:
        f = Q.parse_sentence(Q.sentence(e))
        assert f is not None and f["kind"] == e.kind
        for key in ("color", "shape", "position", "digit", "from_color", "direction", "code", "background"):
            if getattr(e, key) is not None and key in f:
                assert f[key] == getattr(e, key), (e, f)
        n += 1
    assert n > 20
    assert Q.parse_sentence("A dog runs in the park.") is None


def test_clip_caption_describes_objects_already_present(video):
    evs = video.events
    mid = next(e for e in evs if e.kind == "appear" and e.frame > 0 and
               not any(c.kind == "cut" and e.frame < c.frame <= e.frame + 3 for c in evs))
    cap = Q.caption_clip(evs, mid.frame + 1, mid.frame + 3)
    assert f"is at the {mid.position}" in cap or "moves" in cap or "leaves" in cap or "changes" in cap


def test_answers_agree_with_the_event_log(video):
    starts = range(0, video.num_frames, 40)
    clips = [Q.caption_clip(video.events, s, s + 40) for s in starts]
    qas = Q.compose_questions(clips, seed=3, per_type=3)
    types = Counter(q.type for q in qas)
    for t in ("summary", "sub_event", "order", "temporal", "counting", "code", "color", "spatial"):
        assert types[t] >= 1, t
    appear = Counter((e.color, e.shape, e.digit) for e in video.events if e.kind == "appear")
    for qa in qas:
        if qa.options is not None:
            assert len(qa.options) == 4 and len(set(qa.options)) == 4
            assert qa.options["ABCD".index(qa.answer_letter)] == f"{qa.answer_letter}. {qa.answer}"
        if qa.type == "code":
            assert qa.answer == "538"
        if qa.type == "counting" and "scenes" in qa.question:
            assert int(qa.answer) == sum(e.kind == "cut" for e in video.events)
        elif qa.type == "counting" and "an object" in qa.question:
            assert int(qa.answer) == sum(appear.values())
        elif qa.type == "counting":
            key = next(k for k in appear if Q._name(k[1], k[0], k[2]) in qa.question.split("a ", 1)[1])
            assert int(qa.answer) == appear[key]
        if qa.type == "spatial":
            e = next(e for e in video.events if e.kind == "appear"
                     and f"the {Q._name(e.shape, e.color, e.digit)} appear" in qa.question)
            assert qa.answer == e.position
        if qa.type == "order" and qa.answer in ("before", "after"):
            a, b = qa.question.split('"')[1], qa.question.split('"')[3]
            fa = next(e.frame for e in video.events if Q.sentence(e) == a)
            fb = next(e.frame for e in video.events if Q.sentence(e) == b)
            assert (fa < fb) == (qa.answer == "before") and fa != fb


def test_events_and_captions_give_the_same_questions(video):
    clips_ev = [[e for e in video.events if s <= e.frame < s + 50] for s in range(0, 400, 50)]
    caps = [Q.caption_clip(c) for c in clips_ev]
    assert [q.to_dict() for q in Q.compose_questions(clips_ev)] == [q.to_dict() for q in Q.compose_questions(caps)]


def test_free_text_captions_still_give_summary_and_sub_events():
    caps = ["A man walks a dog.", "It starts to rain.", "They go home.", "The sun sets."]
    qas = Q.compose_questions(caps)
    assert {q.type for q in qas} == {"summary", "sub_event"}
    assert qas[0].answer == " ".join(caps)


def test_image_questions_match_the_image():
    im = world.make_image(9, digit_prob=0.5)
    objs = [e for e in im.events if e.kind == "appear"]
    qas = Q.image_questions(im.events)
    assert qas[0].answer == str(len(objs))
    for qa in qas:
        if qa.type == "spatial":
            assert any(qa.answer == e.position and f"the {Q._name(e.shape, e.color, e.digit)}?" in qa.question
                       for e in objs)
    cap = Q.caption_image(im.events)
    assert all(e.position in cap for e in objs)


def test_bad_input():
    with pytest.raises(ValueError, match="unknown question types"):
        Q.compose_questions(["x."], types=["bogus"])
    with pytest.raises(ValueError, match="at least one clip"):
        Q.compose_questions([])
    assert "VideoMME" not in Q.mc_prompt("Q?", ["A. a", "B. b", "C. c", "D. d"])
    assert Q.mc_prompt("Q?", ["A. a", "B. b", "C. c", "D. d"]).endswith("The best answer is:")
