"""The synthetic world: determinism, events agree with pixels, disjoint splits, legible needle codes."""

import numpy as np
import pytest

from longvila.data import world
from longvila.data.vocab import COLORS, POSITIONS


def test_same_seed_same_video_and_splits_differ():
    a = world.make_video(11, 80)
    b = world.make_video(11, 80)
    assert np.array_equal(a.frames, b.frames)
    assert [e.to_dict() for e in a.events] == [e.to_dict() for e in b.events]
    c = world.make_video(11, 80, split="eval")
    assert not np.array_equal(a.frames, c.frames)
    assert a.frames.shape == (80, 32, 32, 3) and a.frames.dtype == np.uint8


def test_frame_size_is_a_parameter():
    v = world.make_video(2, 5, height=48, width=64)
    assert v.frames.shape == (5, 48, 64, 3)


def _cut_frames(events):
    return sorted(e.frame for e in events if e.kind == "cut")


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_events_agree_with_pixels(seed):
    v = world.make_video(seed, 300, digit_prob=0.0)
    cuts = _cut_frames(v.events)
    checked = 0
    for e in v.events:
        if e.kind in ("appear", "color"):
            frame, (x, y) = e.frame, (e.x, e.y)
        elif e.kind == "move":
            nxt_cut = next((c for c in cuts if c > e.frame), None)
            if nxt_cut is not None and nxt_cut <= e.end_frame:
                continue
            frame, (x, y) = e.end_frame, world.cell_center(e.position, 32, 32)
        else:
            continue
        assert world.position_name(x, y, 32, 32) == e.position
        mask = world.object_ink_mask({**e.to_dict(), "x": x, "y": y})
        pix = v.frames[frame][mask]
        assert mask.sum() > 0
        assert (pix == np.array(world.COLOR_RGB[e.color])).all(), (e, frame)
        checked += 1
    assert checked >= 10


def test_log_is_consistent():
    v = world.make_video(5, 500)
    present = {}
    for e in v.events:
        assert e.kind in ("cut", "appear", "move", "color", "leave", "code")
        if e.kind == "cut":
            present.clear()
        elif e.kind == "appear":
            assert e.obj not in present and e.position in POSITIONS and e.color in COLORS
            present[e.obj] = e
        elif e.kind in ("move", "color", "leave"):
            assert e.obj in present, "event on an object that is not on screen"
            if e.kind == "color":
                assert e.from_color == present[e.obj].color != e.color
            present[e.obj] = e
            if e.kind == "leave":
                del present[e.obj]
        # one object per cell, and (colour, shape) unique on screen
        assert len({p.position for p in present.values()}) == len(present)
        assert len({(p.color, p.shape, p.digit) for p in present.values()}) == len(present)
    assert [e.frame for e in v.events] == sorted(e.frame for e in v.events)


def test_digit_images_split_by_index_disjoint():
    tr, ev = world.digit_indices("train"), world.digit_indices("eval")
    assert len(tr) == 1440 and len(ev) == 357
    assert not set(tr) & set(ev)
    for d in range(10):
        assert len(world.digit_indices("eval", d)) >= 30
    v_tr = world.make_video(3, 400, digit_prob=0.8)
    v_ev = world.make_video(3, 400, split="eval", digit_prob=0.8)
    assert v_tr.meta["digit_index"] and v_ev.meta["digit_index"]
    assert all(i < world.DIGIT_SPLIT_INDEX for i in v_tr.meta["digit_index"].values())
    assert all(i >= world.DIGIT_SPLIT_INDEX for i in v_ev.meta["digit_index"].values())


def _read_code(img: np.ndarray, n: int, clf) -> str:
    from skimage.transform import resize

    ink = 1.0 - img[1:-1, 1:-1].mean(axis=2) / 250.0
    w = ink.shape[1] // n
    out = ""
    for i in range(n):
        cell = ink[:, i * w:(i + 1) * w]
        rows = np.where(cell.max(axis=1) > 0.2)[0]
        cell = cell[rows.min():rows.max() + 1] if len(rows) else cell
        out += str(clf.predict(resize(cell, (8, 8), anti_aliasing=True).reshape(1, -1) * 16)[0])
    return out


def test_code_image_is_legible_at_32px():
    """Digits read back from 32x32 eval cards as well as the raw 8x8 eval digits (classifier fit on train)."""
    from sklearn.svm import SVC

    images, target = world._digits()
    tr, ev = world.digit_indices("train"), world.digit_indices("eval")
    clf = SVC(gamma=0.001).fit(images[tr].reshape(len(tr), -1) * 16, target[tr])
    raw = clf.score(images[ev].reshape(len(ev), -1) * 16, target[ev])  # ~0.96
    rng = np.random.default_rng(0)
    codes = ["".join(map(str, rng.integers(0, 10, 3))) for _ in range(100)]
    read = [_read_code(world.code_image(c, "eval", rng), 3, clf) for c in codes]
    per_digit = np.mean([a == b for r, c in zip(read, codes, strict=True) for a, b in zip(r, c, strict=True)])
    assert per_digit >= raw - 0.04, (per_digit, raw)
    assert np.mean([r == c for r, c in zip(read, codes, strict=True)]) >= 0.75


def test_code_card_is_distinct_and_logged():
    v = world.make_video(4, 120, code="907", code_frame=50, code_frames=2)
    ev = [e for e in v.events if e.kind == "code"]
    assert len(ev) == 1 and ev[0].frame == 50 and ev[0].code == "907" and ev[0].end_frame == 51
    means = v.frames.reshape(len(v.frames), -1).mean(axis=1)
    assert means[50] > 160 and means[51] > 160
    assert np.delete(means, [50, 51]).max() < 120


def test_bad_options_raise():
    with pytest.raises(ValueError, match="split"):
        world.make_video(0, 4, split="test")
    with pytest.raises(ValueError, match="num_frames"):
        world.make_video(0, 0)
    with pytest.raises(ValueError, match="code_frame"):
        world.make_video(0, 10, code="12", code_frame=10)
    with pytest.raises(ValueError, match="digits"):
        world.code_image("12a", "eval")
    with pytest.raises(TypeError):
        world.make_video(0, 4, colour="red")
    with pytest.raises(ValueError, match="unknown keys"):
        world.Event.from_dict({"frame": 0, "time": 0, "kind": "cut", "bogus": 1})
