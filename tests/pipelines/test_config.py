"""Typed stage configs: derivation, overrides, validation errors."""

import dataclasses

import pytest

from longvila.pipelines.config import (
    MODULES,
    ConfigError,
    Phase,
    apply_overrides,
    get_stage,
    rope_schedule,
    stage3,
    stage4,
    stage5,
    validate,
)


def test_stage_table_trainable_modules_and_sets():
    want = {1: ("mm_projector",), 2: ("mm_projector", "language_model"), 3: MODULES, 4: ("language_model",),
            5: MODULES}
    for n, train in want.items():
        cfg = get_stage(n)
        assert cfg.stage == n and set(cfg.model.train) == set(train)
        validate(cfg, world_size=2)
    assert [get_stage(n).data.sets for n in range(1, 6)] == [
        ("align",), ("align", "pretrain"), ("short_sft",), ("context_ext",), ("long_sft", "short_sft")]
    assert get_stage(4).sp == 2 and get_stage(5).sp == 2
    assert get_stage(3).eval.set == get_stage(5).eval.set == "short_sft_eval"


def test_each_stage_is_a_copy_of_the_previous():
    s3, s4 = stage3(), stage4()
    # fields stage 4 does not change are inherited from stage 3
    assert s4.optim.beta2 == s3.optim.beta2 and s4.optim.weight_decay == s3.optim.weight_decay
    assert s4.seed == s3.seed and s4.schedule.min_lr_ratio == s3.schedule.min_lr_ratio
    assert s4.data.loss_weighting == s3.data.loss_weighting == "square"
    with pytest.raises(dataclasses.FrozenInstanceError):
        s3.optim.lr = 1.0  # type: ignore[misc]


def test_stage4_rope_follows_scaled_paper_table():
    table = rope_schedule(2048, 1e4)
    assert table[0] == (8192, 1.5e5) and table[1] == (16384, 2.1e6)
    s4 = stage4()
    length, theta = s4.rope()
    assert length >= s4.model.context_length >= 6100  # covers the 6,000-frame haystack + prompt
    assert theta > 1e4
    assert stage5().rope() is None  # stage 5 keeps the extended config it loads
    with pytest.raises(ConfigError, match="context_length"):
        apply_overrides(s4, ["model.context_length=10000000"])


def _stage5_with(*sets):
    return apply_overrides(stage5(), [o.split(":", 1)[1] for o in sum(sets, ()) if o.startswith("5:")])


def test_the_pointer_curriculum_overrides_give_the_measured_variant():
    from longvila.pipelines.config import POINTER_CURRICULUM, STAGE5_BEFORE_LETTERS, stage2

    assert stage2().data.curriculum == () and stage2().data.pointers == 0  # not in the published recipe
    assert not get_stage(1).parallel.labelled_logits  # the full LM head: published figures bit-identical
    cfg = {n: apply_overrides(get_stage(n), [o.split(":", 1)[1] for o in POINTER_CURRICULUM
                                             if o.startswith(f"{n}:")]) for n in (2, 3)}
    cfg[5] = _stage5_with(STAGE5_BEFORE_LETTERS, POINTER_CURRICULUM)
    # text-only pointer phases on the fresh LLM: one plain line, then the VideoMME chat prompt; then captions
    assert [(p.frames, p.pointer, p.form) for p in cfg[2].data.curriculum] == [
        (0, 1.0, "oneline"), (0, 1.0, "videomme"), (1, 0.0, "videomme")]
    assert cfg[2].total_steps == 3750 and cfg[2].schedule.kind == "constant"
    assert [cfg[n].data.pointers for n in (2, 3, 5)] == [2, 1, 1]
    assert cfg[3].data.pointer_text_frac == cfg[5].data.pointer_text_frac == 0.5
    assert cfg[5].data.curriculum == _stage5_with(STAGE5_BEFORE_LETTERS).data.curriculum


def test_stage5_before_the_letter_phases():
    from longvila.pipelines.config import STAGE5_BEFORE_LETTERS

    before = _stage5_with(STAGE5_BEFORE_LETTERS)
    assert [(p.frames, p.batch, p.steps) for p in before.data.curriculum] == [
        (32, 16, 300), (64, 8, 100), (128, 8, 80), (256, 4, 60), (512, 2, 80), (1024, 1, 150), (1500, 1, 200),
        (32, 16, 600)]
    assert all(p == Phase(p.frames, p.batch, p.steps) for p in before.data.curriculum)  # no four-option shares
    assert not before.parallel.labelled_logits
    # everything else as the published stage 5
    assert dataclasses.replace(before, data=stage5().data, parallel=stage5().parallel) == stage5()


def test_the_letter_curriculum_overrides_give_the_measured_stage5():
    from longvila.pipelines.config import LETTER_CURRICULUM, STAGE5_BEFORE_LETTERS

    assert all(o.startswith("5:") for o in LETTER_CURRICULUM)
    before = _stage5_with(STAGE5_BEFORE_LETTERS)
    cfg = _stage5_with(STAGE5_BEFORE_LETTERS, LETTER_CURRICULUM)
    cur, pub = cfg.data.curriculum, before.data.curriculum
    # the earlier phases keep their frames, batches and steps; three letter phases come after the first
    assert [(p.frames, p.batch, p.steps) for p in cur[:1] + cur[4:]] == [(p.frames, p.batch, p.steps) for p in pub]
    assert cur[1] == Phase(1, 64, 500, 0.0, "oneline", needle_frac=1.0, needle_mc_frac=1.0)
    assert cur[2] == Phase(1, 64, 200, 0.0, "videomme", needle_frac=1.0, needle_mc_frac=1.0)
    assert cur[3] == Phase(32, 16, 200, needle_mc_frac=1.0, qa_mc_frac=1.0)
    assert all(p.needle_mc_frac == 0.5 for p in cur[4:]) and cur[-1].qa_mc_frac == 0.5
    assert cfg.total_steps == before.total_steps + 900 and cfg.parallel.labelled_logits
    assert cfg.parallel.sp_ring == stage5().parallel.sp_ring and not any(p.hold for p in cur)


def test_the_published_stage5_is_e3_with_its_schedule_held_and_a_longer_final_phase():
    """Run E11: E3's letter phases, the schedule held over them, a final phase of 900 steps."""
    from longvila.pipelines.config import LETTER_CURRICULUM, STAGE5_BEFORE_LETTERS
    from longvila.pipelines.engine import lr_lambda

    e3 = _stage5_with(STAGE5_BEFORE_LETTERS, LETTER_CURRICULUM)
    cfg = stage5()
    cur = cfg.data.curriculum
    assert [i for i, p in enumerate(cur) if p.hold] == [1, 2, 3]
    assert [dataclasses.replace(p, hold=False) for p in cur[:-1]] == list(e3.data.curriculum[:-1])
    assert cur[-1] == dataclasses.replace(e3.data.curriculum[-1], steps=900)
    assert cfg.parallel.labelled_logits
    assert dataclasses.replace(cfg, data=e3.data) == e3
    # as overrides: E3's phases with hold=1 on the three letter phases and the final phase 900 steps
    held = LETTER_CURRICULUM[0].replace(":needle_mc_frac=1,", ":needle_mc_frac=1:hold=1,").replace(
        ":qa_mc_frac=1,", ":qa_mc_frac=1:hold=1,").replace("32:16:600:", "32:16:900:")
    assert _stage5_with(STAGE5_BEFORE_LETTERS, (held,), LETTER_CURRICULUM[1:]) == cfg
    # outside the letter phases the lr follows the earlier schedule lengthened by 300 final steps
    before = _stage5_with(STAGE5_BEFORE_LETTERS)
    longer = lr_lambda(apply_overrides(before, ["data.curriculum=" + ",".join(
        f"{p.frames}:{p.batch}:{p.steps + 300 * (i == len(before.data.curriculum) - 1)}"
        for i, p in enumerate(before.data.curriculum))]))
    f = lr_lambda(cfg)
    assert all(f(s + 900 * (s >= 300)) == pytest.approx(longer(s), abs=1e-12) for s in range(1870))
    # the letter phases stand at the lr of step 300
    assert {f(s) for s in range(300, 1200)} == {f(300)} and f(300) == pytest.approx(longer(300), abs=1e-12)


def test_stage5_curriculum_grows_frames_and_shrinks_batch_within_limit():
    cur = stage5().data.curriculum
    # the letter phases (one frame, then 32) hold the schedule; the last phase returns to short clips (reading)
    long = [p for p in cur[:-1] if not p.hold]
    frames = [p.frames for p in long]
    batches = [p.batch for p in long]
    assert frames == sorted(frames) and batches == sorted(batches, reverse=True)
    assert cur[-1].frames == cur[0].frames and cur[-1].batch == cur[0].batch
    assert max(frames) <= 1500
    assert stage5().total_steps == sum(p.steps for p in cur)
    assert stage5().phase_at(0) == (0, cur[0])
    assert stage5().phase_at(stage5().total_steps - 1)[0] == len(cur) - 1


def test_overrides_are_typed():
    cfg = apply_overrides(stage3(), ["optim.lr=1e-4", "schedule.steps=7", "parallel.bf16=true",
                                     "data.sets=a,b", "seed=3", "schedule.kind=constant",
                                     "data.curriculum=8:4:2,16:2:3,0:64:4:1.0:oneline", "data.pointers=2"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.schedule.steps == 7 and isinstance(cfg.schedule.steps, int)
    assert cfg.parallel.bf16 is True and cfg.data.sets == ("a", "b") and cfg.seed == 3
    assert cfg.data.curriculum == (Phase(8, 4, 2), Phase(16, 2, 3), Phase(0, 64, 4, pointer=1.0, form="oneline"))
    assert cfg.data.pointers == 2 and cfg.total_steps == 9 and isinstance(cfg.data.curriculum[2].pointer, float)
    # a phase's own data mix after its positional fields (None elsewhere: the stage's value)
    own = apply_overrides(stage5(), ["data.curriculum=32:16:5,8:32:3:needle_frac=1:needle_mc_frac=0.5:cards=0,"
                                     "0:8:2:1.0:oneline:cards=2,8:4:1:qa_mc_frac=1:cards_mc_frac=0"]).data.curriculum
    assert own[0] == Phase(32, 16, 5) and own[0].needle_mc_frac is None
    assert own[1] == Phase(8, 32, 3, needle_frac=1.0, needle_mc_frac=0.5, cards=0)
    assert isinstance(own[1].needle_frac, float) and isinstance(own[1].cards, int)
    assert own[2] == Phase(0, 8, 2, 1.0, "oneline", cards=2) and own[3].qa_mc_frac == 1.0
    assert own[3].cards_mc_frac == 0.0 and own[2].cards_mc_frac is None


@pytest.mark.parametrize("bad, match", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("optimizer.lr=1", "unknown config key 'optimizer.lr'"),
    ("optim.lr=fast", "optim.lr: expected float"),
    ("schedule.steps=1.5", "schedule.steps: expected int"),
    ("parallel.bf16=maybe", "expected a boolean"),
    ("optim", "not key=value"),
    ("optim=3", "is a group"),
    ("schedule.kind=linear", "schedule.kind"),
    ("parallel.zero_stage=3", "zero_stage"),
    ("model.train=mm_projector,decoder", "unknown module"),
    ("model.logn_base=1", "model.logn_base=1"),
    ("data.needle_mc_frac=1.5", "data.needle_mc_frac=1.5 must be in"),
    ("data.loss_weighting=mean", "data.loss_weighting=.mean.: choose one of"),
    ("data.mc_text_frac=-0.1", "data.mc_text_frac=-0.1 must be in"),
    ("data.needle_hand_frac=2", "data.needle_hand_frac=2.0 must be in"),
    ("data.cards=-1", "data.cards=-1 .* must be >= 0"),
    ("data.pointers=-2", "data.pointers=-2 must be >= 0"),
    ("data.curriculum=0:8:2:1.0:chat", r"data.curriculum\[0\]: pointer form 'chat'; choose one of videomme"),
    ("data.pointer_text_frac=1.5", "data.pointer_text_frac=1.5 must be in"),
    ("data.code_near_frac=-0.5", "data.code_near_frac=-0.5 must be in"),
    ("data.curriculum=8:4", "phase '8:4' is not frames:batch:steps"),
    ("data.curriculum=8:4:2:half", "is not frames:batch:steps.:pointer.:form.."),
    ("data.curriculum=8:4:2:1.5", r"data.curriculum\[0\]=.*pointer in \[0, 1\]"),
    ("data.curriculum=8:0:2", r"data.curriculum\[0\]=.*batch >= 1"),
    ("data.curriculum=8:4:2:mc=1", "unknown phase key 'mc'; choose from needle_frac, needle_mc_frac, cards, qa_mc_frac, "
                                    "cards_mc_frac, code_near_frac, hold"),
    ("data.curriculum=8:4:cards=1:2", "is not frames:batch:steps.*key=value"),
    ("data.curriculum=8:4:2:cards=two", "is not frames:batch:steps.*key=value"),
    ("data.curriculum=8:4:2:needle_mc_frac=2", r"data.curriculum\[0\]: needle_mc_frac=2.0 must be in \[0, 1\]"),
    ("data.curriculum=8:4:2:cards=-1", r"data.curriculum\[0\]: cards=-1 must be >= 0"),
    ("data.curriculum=8:4:2:qa_mc_frac=-1", r"data.curriculum\[0\]: qa_mc_frac=-1.0 must be in \[0, 1\]"),
    ("data.curriculum=8:4:2:cards_mc_frac=3", r"data.curriculum\[0\]: cards_mc_frac=3.0 must be in \[0, 1\]"),
    ("data.curriculum=8:4:2:code_near_frac=-1", r"data.curriculum\[0\]: code_near_frac=-1.0 must be in \[0, 1\]"),
    ("model.dynamic_yarn_positions=-5", "model.dynamic_yarn_positions=-5 must be >= 0"),
])
def test_bad_overrides_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(stage3(), [bad])


def test_unknown_stage_and_layout_errors():
    with pytest.raises(ConfigError, match="unknown stage 6"):
        get_stage(6)
    with pytest.raises(ConfigError, match="unknown stage 'x'"):
        get_stage("x")
    with pytest.raises(ConfigError, match="world size 3 is not divisible"):
        validate(stage4(), world_size=3)
    with pytest.raises(ConfigError, match="sp_ring=0"):
        apply_overrides(stage4(), ["parallel.sp_ring=0"])


def test_lr_schedule_warmup_cosine_and_constant():
    from longvila.pipelines.engine import lr_lambda

    cfg = apply_overrides(stage3(), ["schedule.steps=100", "schedule.warmup_steps=10", "schedule.min_lr_ratio=0.1",
                                    "schedule.kind=cosine"])
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0) and f(55) == pytest.approx(0.55) and f(100) == pytest.approx(0.1)
    assert all(f(i) >= f(i + 1) for i in range(10, 100))
    g = lr_lambda(apply_overrides(cfg, ["schedule.kind=constant"]))
    assert g(5) == pytest.approx(0.6) and g(50) == g(99) == 1.0


def test_held_phases_keep_the_lr_of_every_other_step():
    """Phases inserted with ``hold=1`` run at the lr where the schedule stands when they begin; every other step
    keeps the lr it had without them."""
    from longvila.pipelines.engine import lr_lambda, schedule_clock

    base = apply_overrides(stage5(), ["data.curriculum=32:16:30,64:8:20,32:16:50", "schedule.warmup_steps=10"])
    grown = apply_overrides(base, ["data.curriculum=32:16:30,1:64:40:hold=1,1:64:25:0:oneline:hold=true,64:8:20,"
                                   "32:16:50"])
    f, g = lr_lambda(base), lr_lambda(grown)
    assert grown.total_steps == base.total_steps + 65
    assert [schedule_clock(grown, s) for s in (29, 30, 69, 94, 95, 164)] == [29, 30, 30, 30, 30, 99]
    for s in range(base.total_steps):
        assert g(s + 65 * (s >= 30)) == pytest.approx(f(s), abs=1e-12)
    assert all(g(s) == pytest.approx(f(30)) for s in range(30, 95)) and g(164) == pytest.approx(f(99))
    assert grown.data.curriculum[2].form == "oneline" and not grown.data.curriculum[3].hold
    unheld = lr_lambda(apply_overrides(grown, ["data.curriculum=32:16:30,1:64:40,1:64:25,64:8:20,32:16:50"]))
    assert unheld(120) < g(120)  # without the hold the later phases run lower down the cosine
    # a curriculum of one's own holds nothing unless it says so (the published phases' holds go with them)
    assert not any(p.hold for p in base.data.curriculum)
    with pytest.raises(ConfigError, match=r"every phase holds the schedule \(hold=1\)"):
        apply_overrides(base, ["data.curriculum=32:16:30:hold=1,64:8:20:hold=1"])
    with pytest.raises(ConfigError, match="is not frames:batch:steps"):
        apply_overrides(base, ["data.curriculum=32:16:30:hold=maybe"])


def test_sp_loss_scale_turns_world_mean_into_sum_over_sp_mean_over_dp():
    from longvila.pipelines.engine import sp_loss_scale

    # world = dp x sp ranks; rank losses l[d][s] sum over s to the group's loss; the engine takes the mean
    dp, sp = 2, 3
    losses = [[0.5, 1.0, 2.0], [1.5, 0.25, 0.25]]
    engine_mean = sum(sp_loss_scale(sp) * x for row in losses for x in row) / (dp * sp)
    assert engine_mean == pytest.approx(sum(sum(row) for row in losses) / dp)


def test_qa_stats_chance_majority_and_single_answer_types():
    """Chance = uniform over a type's answers, majority = its most common answer; a type with one answer
    for all its questions is named."""
    from longvila.pipelines.evaluate import qa_stats

    typed = [("color", "red"), ("color", "red"), ("color", "blue"), ("color", "green"),
             ("counting", "1"), ("counting", "1")]
    s = qa_stats(typed, [1, 0, 0, 1, 1, 1])
    assert s["chance"] == pytest.approx((4 / 3 + 2 / 1) / 6) and s["majority"] == pytest.approx((2 + 2) / 6)
    assert s["single_answer_types"] == ["counting"]
    assert s["per_type"]["color"] == {"n": 4, "accuracy": 0.5, "chance": 1 / 3, "majority": 0.5}
    with pytest.raises(ValueError, match="3 questions, 2 scores"):
        qa_stats(typed[:3], [1, 0])
