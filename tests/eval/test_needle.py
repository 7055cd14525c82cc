"""Needle in a haystack: grid construction, needle placement, scoring, controls, resume, outputs."""

import json

import numpy as np
import pytest
import torch

from longvila.data import world
from longvila.eval import needle, runner
from longvila.eval.adapters import LongVILAVideoLM
from longvila.model.kv_cache import cache_kwargs, output_cache


def test_frame_counts_default_grid():
    cfg = needle.NeedleConfig(frames=6000, steps=20)
    assert needle.frame_counts(cfg) == list(range(300, 6001, 300))
    assert needle.frame_counts(needle.NeedleConfig(frames=10, steps=3)) == [3, 6, 10]
    with pytest.raises(ValueError, match="steps"):
        needle.frame_counts(needle.NeedleConfig(frames=10, steps=0))


@pytest.mark.parametrize("depth,expected", [(0.0, 0), (0.2, 20), (0.4, 40), (0.6, 60), (0.8, 80), (1.0, 100)])
def test_needle_lands_at_depth(depth, expected):
    n, T, D = 100, 2, 3
    hay = torch.arange(n, dtype=torch.float).view(n, 1, 1).expand(n, T, D)
    marker = torch.full((T, D), -1.0)
    vis, i = needle.insert_needle(hay, marker, depth)
    assert i == expected and vis.shape == (n + 1, T, D)
    assert (vis[i] == -1).all() and int((vis[:, 0, 0] == -1).sum()) == 1
    # the haystack keeps its order around the needle
    rest = torch.cat([vis[:i], vis[i + 1:]])[:, 0, 0]
    assert torch.equal(rest, torch.arange(n, dtype=torch.float))


def test_bad_depth():
    with pytest.raises(ValueError, match="depth"):
        needle.needle_index(1.5, 10)


def test_needle_lands_at_its_token(tiny_lm):
    """In the merged sequence the needle's visual tokens sit at the <image> slot of frame round(d * N)."""
    n, depth = 10, 0.6
    tpf = tiny_lm.model.config.tokens_per_frame
    D = tiny_lm.model.config.text_config.hidden_size
    hay = torch.zeros(n, tpf, D)
    vis, i = needle.insert_needle(hay, torch.ones(tpf, D), depth)
    ids = runner.prompt_ids(tiny_lm, "Q?", n + 1)
    emb = runner.embed(tiny_lm, ids[None], vis)[0]
    slots = (ids == tiny_lm.model.config.image_token_id).nonzero().flatten()
    hit = slots[i * tpf:(i + 1) * tpf]
    assert (emb[hit] == 1).all()
    assert not (emb[slots[: i * tpf]] == 1).all(-1).any() and not (emb[slots[(i + 1) * tpf:]] == 1).all(-1).any()


def test_cell_codes_distinct_three_digits():
    codes = needle.cell_codes(0, 300, 8)
    assert len(set(codes)) == 8 and all(len(c) == 3 and c.isdigit() for c in codes)
    assert codes == needle.cell_codes(0, 300, 8) and codes != needle.cell_codes(1, 300, 8)


def test_teacher_forced_equals_greedy(tiny_lm):
    """Teacher-forced exact match is true exactly for the continuation greedy generation produces."""
    torch.manual_seed(1)
    vis = torch.randn(6, tiny_lm.model.config.tokens_per_frame, tiny_lm.model.config.text_config.hidden_size)
    prompt = runner.prompt_ids(tiny_lm, "Q?", 6)
    emb = runner.embed(tiny_lm, prompt[None], vis)
    out = tiny_lm.model.language_model.generate(inputs_embeds=emb, max_new_tokens=3, do_sample=False,
                                                min_new_tokens=3, eos_token_id=None, pad_token_id=0)
    greedy = out[0, -3:]
    wrong = greedy.clone()
    wrong[2] = (wrong[2] + 1) % tiny_lm.model.config.text_config.vocab_size
    targets = torch.stack([greedy, wrong])
    ids = torch.cat([prompt.expand(2, -1), targets], dim=1)
    embeds = torch.cat([runner.embed(tiny_lm, ids[b:b + 1], vis) for b in range(2)])
    assert runner.teacher_forced_correct(tiny_lm, embeds, targets).tolist() == [True, False]


def test_shared_prefix_scoring_equals_full(tiny_lm):
    """Computing the shared haystack prefix once gives the same argmax as B full forward passes."""
    torch.manual_seed(2)
    D = tiny_lm.model.config.text_config.hidden_size
    rows = torch.randn(3, 40, D)
    rows[1:, :25] = rows[0, :25]
    full = runner.teacher_forced_argmax(tiny_lm, rows, 3)
    shared = runner.teacher_forced_argmax_shared(tiny_lm, rows[:1, :25], rows[:, 25:], 3)
    assert torch.equal(full, shared)
    logits_full = tiny_lm.model.language_model(inputs_embeds=rows, use_cache=False).logits[:, -4:]
    llm = tiny_lm.model.language_model
    cache = output_cache(llm(inputs_embeds=rows[:1, :25], use_cache=True))
    cache.batch_repeat_interleave(3)
    pos = torch.arange(25, 40).expand(3, -1)
    logits_shared = llm(inputs_embeds=rows[:, 25:], position_ids=pos, **cache_kwargs(llm, cache)).logits[:, -4:]
    torch.testing.assert_close(logits_shared, logits_full, atol=2e-5, rtol=1e-4)


def _cfg(tmp_path, **kw):
    base = dict(out=str(tmp_path / "needle"), frames=40, steps=2, needles=3, depths=(0.0, 0.5, 1.0), seed=0,
                reference_cards=0)
    base.update(kw)
    return needle.NeedleConfig(**base)


def test_grid_oracle_and_control(tiny_lm, tmp_path, monkeypatch):
    """With a scorer that answers right iff it finds the card, needles score 1.0 and the no-needle
    controls 0.0."""
    def oracle(self, question, rows, targets, shared_frames=None):
        # A row is correct iff one of its frames holds the visual tokens of that code's card.
        ok = []
        for b in range(len(targets)):
            code = tiny_lm.tokenizer.decode(targets[b].tolist())
            cards = [world.code_image(code, "eval", np.random.default_rng([0, n, int(code)]))
                     for n in needle.frame_counts(_cfg(tmp_path))]
            tokens = runner.encode_frames(tiny_lm, np.stack(cards)).flatten(0, 1)  # (cards * T, D)
            ok.append(bool((rows[b].flatten(0, 1)[:, None] - tokens[None]).abs().amax(-1).lt(1e-5).any()))
        wrong = targets.clone()
        wrong[:, 0] = (wrong[:, 0] + 1) % tiny_lm.model.config.text_config.vocab_size
        return torch.where(torch.tensor(ok)[:, None], targets, wrong)  # predicted answer ids

    monkeypatch.setattr(LongVILAVideoLM, "teacher_forced", oracle)
    s = needle.run(_cfg(tmp_path, reference_cards=300, publish=True), lm=tiny_lm)
    assert s["accuracy"] == 1.0 and s["trials"] == 2 * 3 * 3
    assert s["control_accuracy"] == 0.0 and s["control_trials"] == 2 * 3
    # the reading reference (the same cards in a short haystack) is reported apart from the grid
    assert s["read_accuracy"] == 1.0 and s["read_trials"] == 2 * 3
    assert s["grid"] == [[1.0, 1.0]] * 3
    assert (tmp_path / "needle" / "heatmap.png").stat().st_size > 1000
    res = json.loads((tmp_path / "results" / "needle-40.json").read_text())
    assert res["metrics"]["accuracy"] == 1.0 and res["metrics"]["control"] == 0.0
    assert res["details"]["accuracy_ci"] == s["accuracy_ci"] and s["accuracy_ci"][1] == 1.0
    assert s["accuracy_ci_by_code"] == [1.0, 1.0] == res["details"]["accuracy_ci_by_code"]
    assert s["accuracy_ci"][0] == pytest.approx(0.8241, abs=1e-4)  # 18 of 18 (Wilson: n / (n + z^2))
    assert res["metrics"]["acc_read"] == 1.0 and res["metrics"]["acc_if_read"] == 1.0
    assert res["metrics"]["acc@40"] == 1.0 and "heatmap" in res["plots"]
    assert res["details"]["if_read_per_frames"] == {"20": 1.0, "40": 1.0}
    assert res["metrics"]["acc_ref_reader"] == s["reference_reader_accuracy"]
    assert 0.0 <= s["reference_reader_accuracy"] <= 1.0


def test_if_read_accuracy_counts_only_cards_read_in_the_reference(tmp_path):
    """acc_if_read: grid needles whose very card (same frame count, same code) is read right in the
    reading-reference cell."""
    cfg = _cfg(tmp_path, depths=(0.0, 1.0))

    def cell(n, depth, correct, read=False, control=False):
        return {"frames": n, "depth": depth, "control": control, "read": read, "codes": ["111", "222"],
                "correct": correct, "accuracy": sum(correct) / 2}

    cells = [cell(20, 0.0, [True, True]), cell(20, 1.0, [True, False]), cell(40, 0.0, [False, True]),
             cell(40, 1.0, [False, False]),
             cell(20, None, [False, True], read=True), cell(40, None, [True, False], read=True),
             cell(20, None, [False, False], control=True), cell(40, None, [False, False], control=True)]
    s = needle.summarize(cfg, cells, [20, 40])
    assert s["accuracy"] == 4 / 8 and s["read_accuracy"] == 2 / 4 and s["control_accuracy"] == 0.0
    # 4 of 8: the Wilson 95% interval (closed form: 0.5 -+ 0.2848)
    assert s["accuracy_ci"] == pytest.approx([0.2152, 0.7848], abs=1e-4)
    # resampling the codes (two per frame count, each asked at both depths): 4 groups of 2 outcomes
    lo, hi = s["accuracy_ci_by_code"]
    assert lo <= 0.5 <= hi and hi - lo >= s["accuracy_ci"][1] - s["accuracy_ci"][0] - 0.1
    # read in the reference: (20, "222") and (40, "111") -> grid answers True, False (frames 20) and False, False (40)
    assert s["if_read_trials"] == 4 and s["if_read_accuracy"] == 1 / 4
    assert s["if_read_per_frames"] == {"20": 0.5, "40": 0.0}
    assert s["grid"] == [[1.0, 0.5], [0.5, 0.0]]


def test_reference_reader():
    """The pixel-SVM reference reads cards of the writers it trained on, fails when the codes do not match
    the cards, and refuses mismatched inputs."""
    rng = np.random.default_rng(5)
    codes = [f"{int(c):03d}" for c in rng.integers(0, 1000, 40)]
    cards = np.stack([world.code_image(c, "train", rng) for c in codes])
    assert needle.reference_reader_accuracy(cards, codes, train_cards=1500) >= 0.8
    shifted = ["".join(str((int(d) + 1) % 10) for d in c) for c in codes]
    assert needle.reference_reader_accuracy(cards, shifted, train_cards=1500) <= 0.1
    with pytest.raises(ValueError, match="3 cards for 40 codes"):
        needle.reference_reader_accuracy(cards[:3], codes)


def test_work_units_and_cell_files(tmp_path):
    """Every (frame count, depth) is a grid cell; controls add one no-needle and one reading-reference cell
    per frame count, each with its own file."""
    cfg = _cfg(tmp_path)
    units = needle.work_units(cfg, [20, 40])
    assert [(u.frames, u.kind, u.depth) for u in units[:3]] == [(20, "grid", 0.0), (20, "grid", 0.5), (20, "grid", 1.0)]
    assert sum(u.kind == "control" for u in units) == 2 and sum(u.kind == "read" for u in units) == 2
    names = {u.path(tmp_path).name for u in units}
    assert len(names) == len(units) and "f00020-d0.50.json" in names and "f00040-read.json" in names
    assert len(needle.work_units(_cfg(tmp_path, controls=False), [20, 40])) == 6


def test_resume_computes_only_missing_cells(tiny_lm, tmp_path, monkeypatch):
    cfg = _cfg(tmp_path)
    calls = []
    real = LongVILAVideoLM.teacher_forced

    def flaky(self, *args, **kwargs):
        if len(calls) == 4:
            raise KeyboardInterrupt("killed")
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LongVILAVideoLM, "teacher_forced", flaky)
    with pytest.raises(KeyboardInterrupt):
        needle.run(cfg, lm=tiny_lm)
    cells = sorted((tmp_path / "needle" / "cells").glob("*.json"))
    assert len(cells) == 4  # written as it went, atomically (no temp files left)
    assert not list((tmp_path / "needle" / "cells").glob(".*"))
    monkeypatch.setattr(LongVILAVideoLM, "teacher_forced", real)
    s = needle.run(cfg, lm=tiny_lm)
    total = 2 * 3 + 2 + 2  # grid cells, controls, reading-reference cells
    assert s["computed_cells"] == total - 4 and s["reused_cells"] == 4 and s["embeddings_cached"]
    again = needle.run(cfg, lm=tiny_lm)
    assert again["computed_cells"] == 0 and again["grid"] == s["grid"]
    # the reading reference with another haystack length: only its cells are recomputed
    alone = needle.run(_cfg(tmp_path, reference_frames=0), lm=tiny_lm)
    assert alone["computed_cells"] == 2 and alone["read_trials"] == 2 * 3
    # a different seed changes the codes: every cell is recomputed, none reused by mistake
    other = needle.run(_cfg(tmp_path, seed=5), lm=tiny_lm)
    assert other["computed_cells"] == total


def test_user_video_too_short(tiny_lm, tmp_path):
    from longvila.eval.videomme import write_mp4

    video = tmp_path / "hay.mp4"
    write_mp4(video, np.zeros((12, 32, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"hay.mp4: video has 12 frames, 40 asked"):
        needle.run(_cfg(tmp_path, video=str(video)), lm=tiny_lm)
    with pytest.raises(FileNotFoundError, match="missing.mp4: haystack video not found"):
        needle.run(_cfg(tmp_path, video=str(tmp_path / "missing.mp4")), lm=tiny_lm)


@pytest.mark.dist
def test_sharded_grid_matches_one_process(tiny_ckpt, tmp_path):
    """With --nproc 2 every cell's forward pass is sharded over 2 ranks (MM-SP inference); the predicted
    answers of every cell equal the one-process run's."""
    from longvila.eval import needle_sp

    one = needle.run(_cfg(tmp_path / "one"), ckpt=str(tiny_ckpt))
    cfg2 = _cfg(tmp_path / "two", nproc=2)
    two = needle_sp.run_sharded(cfg2, tiny_ckpt, timeout=300)
    assert two["computed_cells"] == 10 and two["grid"] == one["grid"]
    for f in sorted((tmp_path / "one" / "needle" / "cells").glob("*.json")):
        a = json.loads(f.read_text())
        b = json.loads((tmp_path / "two" / "needle" / "cells" / f.name).read_text())
        assert a["predicted"] == b["predicted"] and a["codes"] == b["codes"], f.name
