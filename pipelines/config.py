"""Typed configs of the five-stage recipe: one function per stage, each derived from the previous one.

Design choices:
- Frozen dataclasses in small groups with units in the field names or comments (model, data, optim,
  schedule, parallel, checkpoint, eval), after torchtitan's job config and nanochat's grouped flags. A
  stage is ``dataclasses.replace`` of the previous stage, so the table of differences between the stages
  is the code of ``stage2`` ... ``stage5``.
- Overrides from the command line are ``group.field=value`` strings parsed with the field's annotated
  type (``--set optim.lr=1e-4``); an unknown group or field is a ``ConfigError`` naming it.
- Stage 4 (context extension) carries its RoPE schedule as data: a table of (context length, rope theta)
  rows, scaled from the paper's table (Qwen2 at 32k positions and theta 1e6 raised to 15x theta at 4x
  length, 210x at 8x, 1,100x at 16x and 3,600x at 32x) to this model's base length. The stage picks the
  row of its training length and writes both values into the saved model config.
- Stage 5 (long SFT) is a frame-count curriculum: phases of (frames, batch, steps), short clips with big
  batches first, long ones with batch 1 after them, then one more short-clip phase at the schedule's low
  tail that consolidates reading; a uniform-length run with batch 1 does not learn long-video retrieval on
  this model (see docs/ and the reference notes).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, replace


class ConfigError(ValueError):
    """A configuration that cannot run (unknown stage, unknown override key, bad value or layout)."""


MODULES = ("vision_tower", "mm_projector", "language_model")
# how text pointer questions are asked (``datasource.pointer_sample``)
POINTER_FORMS = ("videomme", "no-header", "oneline")

# The paper's context-extension table, as multiples of the base model's (positions, rope theta):
# Qwen2-7B starts at 32k positions with theta 1e6; 131k -> 1.5e7, 262k -> 2.1e8, 524k -> 1.1e9, 1M -> 3.6e9.
PAPER_ROPE_MULTIPLES: tuple[tuple[int, float], ...] = ((4, 15.0), (8, 210.0), (16, 1100.0), (32, 3600.0))


def rope_schedule(base_positions: int, base_theta: float) -> tuple[tuple[int, float], ...]:
    """The paper's (context length, rope theta) table scaled to a model's base positions and theta."""
    return tuple((base_positions * m, base_theta * t) for m, t in PAPER_ROPE_MULTIPLES)


@dataclass(frozen=True)
class ModelCfg:
    name: str = "tiny"  # model preset used when a stage starts from scratch (stage 1 without --from)
    vision_pretrained: str = ""  # from scratch: a local SigLIP folder for the vision tower ("" = random)
    llm_pretrained: str = ""  # from scratch: a local Qwen2 folder (AutoModelForCausalLM) for the LLM
    train: tuple[str, ...] = ("mm_projector",)  # modules that receive gradients; the others stay frozen
    # Context extension: (max positions, rope theta) rows; empty keeps the checkpoint's RoPE settings.
    rope_schedule: tuple[tuple[int, float], ...] = ()
    context_length: int = 0  # tokens; selects the rope_schedule row (smallest length >= this); 0 = none
    # log-n attention scaling: queries past this many positions get logits x log(pos + 1) / log(base),
    # written into the saved LLM config (``logn_attention_base``); 0 keeps the checkpoint's setting
    logn_base: int = 0
    # dynamic YaRN at inference: inputs longer than this many positions get RoPE rescaled by length / this
    # (``model.rope``), written into the saved LLM config (``dynamic_yarn_positions``); 0 keeps the checkpoint's
    dynamic_yarn_positions: int = 0


@dataclass(frozen=True)
class Phase:
    """One phase of a length curriculum: ``steps`` optimizer steps at ``frames`` frames, ``batch`` samples;
    ``pointer`` of each micro-batch are text pointer questions (``datasource.pointer_sample``: which option is
    W? answered with its letter), the letter binding of the multiple-choice protocol taught on its own, asked
    in ``form`` (``datasource.POINTER_FORMS``: the VideoMME chat prompt, it without the instruction line, or
    one plain line). ``frames=0`` is a text-only phase (no fresh cards or needles either).

    ``needle_frac``, ``needle_mc_frac`` and ``cards`` set the data group's fields of the same names for this
    phase alone (None: the stage's value), so one phase can differ in its mix, e.g. ask every needle and
    fresh card as a four-option question (``PHASE_KEYS``; ``frames:batch:steps:needle_mc_frac=1.0``);
    ``qa_mc_frac`` asks the sets' own questions afresh, that share of them with four options (None: as the
    sets were built, 30% of them); ``cards_mc_frac`` asks that share of the fresh cards with four options (None:
    the phase's ``needle_mc_frac``), so the cards can stay open captions while needles are asked in letters;
    ``code_near_frac`` sets the data group's field for the phase (close distractors once the letter is learnt).
    ``hold``: the phase holds the lr schedule (``engine.schedule_clock``): its steps run at the lr where the
    schedule stands when it begins, and the cosine runs over the other phases' steps alone, so phases inserted
    into a recipe leave the lr of every other step where it was (``frames:batch:steps:hold=1``)."""

    frames: int
    batch: int
    steps: int
    pointer: float = 0.0
    form: str = "videomme"
    needle_frac: float | None = None
    needle_mc_frac: float | None = None
    cards: int | None = None
    qa_mc_frac: float | None = None
    cards_mc_frac: float | None = None
    code_near_frac: float | None = None
    hold: bool = False


# the data fields a curriculum phase may set for itself (``key=value`` after frames:batch:steps[:pointer[:form]])
PHASE_KEYS = ("needle_frac", "needle_mc_frac", "cards", "qa_mc_frac", "cards_mc_frac", "code_near_frac")
# ... and the phase's own keys besides them
PHASE_OWN_KEYS = ("hold",)


@dataclass(frozen=True)
class DataCfg:
    sets: tuple[str, ...] = ("align",)  # set folders under --data
    frames: int = 8  # frames sampled per video (uniformly over its length)
    seq_len: int = 512  # tokens per packed row (text-only sets) / cap for one sample
    batch: int = 8  # samples per micro-batch per data-parallel rank
    curriculum: tuple[Phase, ...] = ()  # overrides frames/batch/steps phase by phase when set
    max_turns: int = 0  # QA turns kept per sample, chosen at random (0 = all)
    needle_frac: float = 0.0  # share of each micro-batch made of synthetic needle-in-a-haystack samples
    needle_mc_frac: float = 0.0  # share of those asked as four-option multiple choice (as the sets' mc_frac)
    needle_hand_frac: float = 0.5  # share of those whose card is handwritten (the rest printed); also fresh cards
    cards: int = 0  # freshly drawn code cards added to every micro-batch (captioned, or asked at needle_mc_frac)
    # share of needle and fresh-card codes that repeat a digit (uniform 3-digit codes: 28%). The model tends to
    # infer which cell to read next from the digits it has written, so "778" came out as "777"
    code_repeat_frac: float = 0.0
    # share of four-option needle and card questions whose distractors are one digit away from the code ("474"
    # against "477", "444", "414") instead of its reverse and random codes: the letter then needs every digit read
    code_near_frac: float = 0.0
    # how a micro-batch's answer tokens share the loss: "token" (plain mean), "square" (a sample of n answer
    # tokens weighs 1/sqrt(n) per token, InternVL 2.5's square averaging) or "sample" (each sample equal)
    loss_weighting: str = "token"
    # share of each micro-batch made of text multiple-choice samples (a written description, then a four-option
    # question answered with the letter): they teach the answer format apart from perception
    mc_text_frac: float = 0.0
    # pointer questions (a curriculum phase's ``pointer`` share): this share of them has the sets' option texts as
    # options ("a small red circle", "top left", "471"), the rest single words (colours, shapes, numbers)
    pointer_text_frac: float = 0.0
    pointers: int = 0  # pointer questions added to every micro-batch besides (keep the letter binding alive)
    # micro-batches each rank builds ahead in a background thread while the model trains on the current one (0:
    # built on demand). The batches are the same either way (a pure function of seed, rank and position)
    prefetch: int = 2


@dataclass(frozen=True)
class OptimCfg:
    lr: float = 1e-3  # peak learning rate
    weight_decay: float = 0.0
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global gradient norm; 0 disables
    vision_lr_scale: float = 1.0  # the vision tower's lr = lr * this (VILA trains the tower at a lower lr)


@dataclass(frozen=True)
class ScheduleCfg:
    steps: int = 100  # optimizer steps (ignored when data.curriculum is set: sum of its phases)
    warmup_steps: int = 10
    kind: str = "cosine"  # "cosine" or "constant" (both with linear warmup)
    min_lr_ratio: float = 0.1  # cosine floor as a fraction of the peak
    grad_accum: int = 1  # micro-batches per optimizer step


@dataclass(frozen=True)
class ParallelCfg:
    sp_ulysses: int = 1  # Ulysses (all-to-all) degree of the sequence-parallel group
    sp_ring: int = 1  # ring degree; dp = world size / (sp_ulysses * sp_ring)
    zero_stage: int = 1  # DeepSpeed ZeRO stage 0-2
    bf16: bool = False  # DeepSpeed bf16 mixed precision (casts the whole module, frozen parts included)
    timeout_s: int = 600  # process-group timeout
    attn_backend: str = "auto"  # block kernels: auto | torch | flash_attn | ring_flash_attn (parallel.backends)
    torch_adam: bool = False  # PyTorch's AdamW on GPU too (DeepSpeed's fused Adam otherwise; CPU always torch)
    # the LM head and its cross-entropy at the labelled positions only (``mmsp_forward(labelled_logits=True)``):
    # the same loss and gradients up to float rounding, 1.2x a step on a row of pointer questions; off in the
    # published recipe, whose figures are bit-identical with the full head
    labelled_logits: bool = False
    # the ranks of an SP group share the work of building their (identical) micro-batches: each builds 1/sp of
    # them and the group exchanges them (``datasource.shared_stream``); the same batches either way
    share_batches: bool = True


@dataclass(frozen=True)
class CheckpointCfg:
    every_steps: int = 50  # resumable training state every this many optimizer steps
    keep: int = 2  # intermediate checkpoints kept


@dataclass(frozen=True)
class EvalCfg:
    set: str = ""  # held-out short-video QA set evaluated after the stage ("" = none)
    frames: int = 8
    limit: int = 0  # questions evaluated (0 = all)
    pointer: int = 512  # held-out text pointer questions per level (single words, the set's option texts); 0 = none


@dataclass(frozen=True)
class VisionPretrainCfg:
    """Vision-tower pretraining before stage 1 of a from-scratch model (see ``vision_pretrain.py``).

    LongVILA starts from a pretrained SigLIP; offline there are no weights, so the random tower is first
    trained as SigLIP itself is (sigmoid image-text loss on the image-caption set). Skipped when
    ``model.vision_pretrained`` is given, when the stage starts from a checkpoint, or with ``steps=0``.
    """

    steps: int = 0  # optimizer steps (0 = no pretraining)
    batch: int = 128  # image-caption pairs per step (the sigmoid loss compares every pair of the batch)
    lr: float = 1e-3
    dim: int = 64  # width of the shared image/text embedding
    sets: tuple[str, ...] = ("align",)  # image-caption set folders under --data
    heldout: int = 128  # last pairs of the sets, kept out of training, for the retrieval accuracy
    fresh_cards: int = 0  # freshly drawn code cards added to each batch (unlimited renderings to learn reading)
    hand_frac: float = 0.5  # share of the fresh cards that are handwritten (the rest printed)


@dataclass(frozen=True)
class StageConfig:
    stage: int
    name: str
    seed: int = 0
    log_every: int = 1  # steps between JSONL/TensorBoard records
    model: ModelCfg = field(default_factory=ModelCfg)
    data: DataCfg = field(default_factory=DataCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    schedule: ScheduleCfg = field(default_factory=ScheduleCfg)
    parallel: ParallelCfg = field(default_factory=ParallelCfg)
    checkpoint: CheckpointCfg = field(default_factory=CheckpointCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    vision_pretrain: VisionPretrainCfg = field(default_factory=VisionPretrainCfg)

    @property
    def sp(self) -> int:
        return self.parallel.sp_ulysses * self.parallel.sp_ring

    @property
    def total_steps(self) -> int:
        return sum(p.steps for p in self.data.curriculum) if self.data.curriculum else self.schedule.steps

    def phase_at(self, step: int) -> tuple[int, Phase]:
        """(index, phase) of the curriculum phase that optimizer step ``step`` (0-based) belongs to."""
        phases = self.data.curriculum or (Phase(self.data.frames, self.data.batch, self.schedule.steps),)
        start = 0
        for i, p in enumerate(phases):
            if step < start + p.steps:
                return i, p
            start += p.steps
        return len(phases) - 1, phases[-1]

    def rope(self) -> tuple[int, float] | None:
        """(max positions, rope theta) this stage trains with, or None to keep the checkpoint's."""
        if not self.model.rope_schedule or not self.model.context_length:
            return None
        for length, theta in sorted(self.model.rope_schedule):
            if length >= self.model.context_length:
                return length, theta
        raise ConfigError(
            f"model.context_length={self.model.context_length} exceeds the longest rope_schedule row "
            f"({max(r[0] for r in self.model.rope_schedule)})"
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------- the five stages (tiny default)
# Base positions and theta of the tiny model (longvila.model.tiny_config); stage 4 scales them.
TINY_BASE_POSITIONS = 2048
TINY_BASE_THETA = 1e4


def stage1() -> StageConfig:
    """Multi-modal alignment: projector only, image-caption pairs, high learning rate.

    From scratch (no ``--from``, no ``model.vision_pretrained``) the vision tower is pretrained first
    (``vision_pretrain``), standing in for the pretrained SigLIP the paper starts from.
    """
    return StageConfig(
        stage=1,
        name="align",
        model=ModelCfg(train=("mm_projector",)),
        data=DataCfg(sets=("align",), frames=1, seq_len=256, batch=16),
        optim=OptimCfg(lr=2e-3),
        schedule=ScheduleCfg(steps=60, warmup_steps=5, kind="cosine"),
        checkpoint=CheckpointCfg(every_steps=30),
        # 64 freshly drawn code cards in every batch besides the align set's fixed ones: a linear probe on the
        # tower then reads 99.9% of held-out printed codes (98.9% with the align cards alone)
        vision_pretrain=VisionPretrainCfg(steps=1600, fresh_cards=64),
    )


def stage2() -> StageConfig:
    """Pre-training: projector + LLM on image-caption and interleaved image-text."""
    s = stage1()
    return replace(
        s,
        stage=2,
        name="pretrain",
        model=replace(s.model, train=("mm_projector", "language_model")),
        # the align captions too: half of them are code cards, which teach the LLM to read the digits off a
        # card's visual token (the needle evaluation and the code questions depend on it)
        # plus 4 freshly drawn cards per micro-batch: unlimited renderings to read from
        # the letter-binding curriculum (text-only pointer phases first: POINTER_CURRICULUM) is not in the
        # recipe: taught before the captions, it halved held-out QA after stage 3 (docs/recipe.md#letters-the-pointer-curriculum-in-make-all)
        data=replace(s.data, sets=("align", "pretrain"), seq_len=512, batch=16, cards=4),
        optim=replace(s.optim, lr=1e-3, weight_decay=0.01),
        # constant lr: reading codes starts only after a ~300-step plateau, and a cosine decay over 800 steps
        # ended it before that (per-digit accuracy at chance, 10%); constant gave 40-56% held-out
        schedule=replace(s.schedule, steps=2000, warmup_steps=10, kind="constant"),
        vision_pretrain=VisionPretrainCfg(),  # stages after 1 start from a checkpoint
    )


def stage3() -> StageConfig:
    """Short SFT: everything, image QA and short-video QA; held-out short-video QA afterwards."""
    s = stage2()
    return replace(
        s,
        stage=3,
        name="short_sft",
        model=replace(s.model, train=MODULES),
        # all frames of the 8-32-frame clips; half needle samples so the vision tower and the LLM learn to read
        # code cards before stage 5 looks for them in long videos
        # square loss averaging (kept by stages 4 and 5): one-word answers are not drowned by the long captions
        # packed beside them (with 2,000 cosine steps: held-out QA after stage 5 41.7% -> 45.0%, needle grid
        # 60.5% -> 67.5%)
        data=replace(s.data, sets=("short_sft",), frames=32, batch=8, needle_frac=0.5, cards=2,
                     loss_weighting="square"),
        # the tower at a tenth of the lr: at the full lr the LM loss collapsed its features (output spread
        # across images 1.18 -> 0.22) and QA stayed at chance; 0.1 keeps them (1.11), as VILA's lower tower lr
        optim=replace(s.optim, lr=1e-3, vision_lr_scale=0.1),
        # the model underfits (training-set QA ~30% after stage 5 with 800 steps): 800 constant -> 2,000 cosine
        # steps raised held-out QA after stage 3 from 30.8% to 42.3% (3,000 steps: 43.3%; 800 cosine: 34.5%)
        schedule=replace(s.schedule, steps=2000, warmup_steps=20, kind="cosine"),
        checkpoint=replace(s.checkpoint, every_steps=100),
        eval=EvalCfg(set="short_sft_eval", frames=32),
    )


def stage4() -> StageConfig:
    """Context extension: LLM only on long text, RoPE raised per the scaled paper table, SP over all ranks."""
    s = stage3()
    return replace(
        s,
        stage=4,
        name="context_ext",
        model=replace(
            s.model,
            train=("language_model",),
            rope_schedule=rope_schedule(TINY_BASE_POSITIONS, TINY_BASE_THETA),
            # the row covering 16k positions (theta 2.1e6): a 6,000-frame needle question is 4x stage 5's
            # longest video, and the slower rotation keeps those distances closer to trained ones
            context_length=16384,
        ),
        data=replace(s.data, sets=("context_ext",), frames=0, seq_len=8192, batch=1, needle_frac=0.0, cards=0),
        optim=replace(s.optim, lr=3e-4),
        schedule=replace(s.schedule, steps=30, warmup_steps=3, kind="constant"),
        parallel=replace(s.parallel, sp_ring=2),
        checkpoint=replace(s.checkpoint, every_steps=10),
        eval=EvalCfg(),
    )


def stage5() -> StageConfig:
    """Long SFT: everything, the long-video set, a frame-count curriculum (batch shrinks as length grows), MM-SP."""
    s = stage4()
    return replace(
        s,
        stage=5,
        name="long_sft",
        # log-n attention scaling past 256 positions, trained with it: a 6,000-frame question is 4x the longest
        # training video, and without it the attention to the needle thins out (4-count needle grid 51% -> 67.5%;
        # bases 64 / 512 gave 63% / 66%, the same scaling only at inference 64%)
        # dynamic YaRN past the longest training sample (1,500 frames and a question, ~1,536 positions): at 6,000
        # frames the tiny model still finds the needle, but its slow RoPE dimensions turn unseen angles into
        # misread digits (dynamic YaRN at inference: 6,000-frame needles 40% -> 100% on the same checkpoint)
        model=replace(s.model, train=MODULES, rope_schedule=(), context_length=0, logn_base=256,
                      dynamic_yarn_positions=1536),
        data=replace(
            s.data,
            # short SFT mixed in, so that long-video training does not erase short-video QA (40% vs 33%)
            sets=("long_sft", "short_sft"),
            needle_frac=0.5,
            # fresh cards in every micro-batch: stage 4 (text only, new RoPE) wipes the reading out, and the long
            # phases alone bring it back only in part; 6 rather than 2, half of their codes (and the needles')
            # repeating a digit: reading alone 97.1% -> 99.6% of 1,000 held-out printed cards with the final
            # short phase below, and the "778" -> "777" slips (the next cell guessed from the digits written) gone
            cards=6,
            code_repeat_frac=0.5,
            max_turns=2,
            curriculum=(
                Phase(frames=32, batch=16, steps=300),
                # the letter phases (docs/recipe.md#letters-close-distractors-and-a-held-schedule-2026-12-07-later,
                # run E11): the model answers VideoMME's four-option questions with a letter only once it has left
                # the chance plateau of the letter binding, and it leaves it on four-option questions about one
                # card among one haystack frame, 64 an optimizer step, asked on one plain line (~150 steps); then
                # the same in the VideoMME chat prompt, then 32-frame clips with every needle, card and set
                # question four-option. VideoMME letters at 64 frames 25.6% -> 45.6% (E11 and make all: one model,
                # bit for bit). They hold the lr schedule (they run at the lr where it stands after the first
                # phase), so every other phase keeps the lr it had without them: the 900 steps they add, stretching
                # the cosine instead, put the long and final phases lower down it and cost the needle grid 3.3
                # points (95.7%, run E3)
                Phase(frames=1, batch=64, steps=500, form="oneline", needle_frac=1.0, needle_mc_frac=1.0, hold=True),
                Phase(frames=1, batch=64, steps=200, needle_frac=1.0, needle_mc_frac=1.0, hold=True),
                Phase(frames=32, batch=16, steps=200, needle_mc_frac=1.0, qa_mc_frac=1.0, hold=True),
                # from here on half the needles, cards and set questions keep four options
                Phase(frames=64, batch=8, steps=100, needle_mc_frac=0.5),
                Phase(frames=128, batch=8, steps=80, needle_mc_frac=0.5),
                Phase(frames=256, batch=4, steps=60, needle_mc_frac=0.5),
                # the long phases are cheap (1,500 frames: ~0.5 s a step on 2 cores): 50/60/50 -> 80/150/200 steps
                # cost 30 s and gave needle grid 96.8% -> 97.2% (6,000 frames 86.7% -> 100%), held-out QA
                # 33.5% -> 35.5% (one run each from the same stage 4)
                Phase(frames=512, batch=2, steps=80, needle_mc_frac=0.5),
                Phase(frames=1024, batch=1, steps=150, needle_mc_frac=0.5),
                Phase(frames=1500, batch=1, steps=200, needle_mc_frac=0.5),
                # a final short-clip phase at the schedule's low tail consolidates reading: the model leaves the
                # long phases reading 97.1% of held-out printed cards, 99.2-99.6% after 150-600 such steps
                # (needle grid 98.0% -> 99.2% with 600); it keeps retrieval (the grid on cards it reads: 100%).
                # The whole recipe with 600 such steps and no letter phases (make all, commit 88f03a7): needle grid
                # 99.8%; with the letter phases, 900 steps keep it at 99.0% (600: 98.3%)
                Phase(frames=32, batch=16, steps=900, needle_mc_frac=0.5, qa_mc_frac=0.5),
            ),
        ),
        optim=replace(s.optim, lr=5e-4),
        schedule=replace(s.schedule, warmup_steps=10, kind="cosine"),
        # the LM head at the labelled positions only: the letter phases' rows are long prompts with one label
        parallel=replace(s.parallel, labelled_logits=True),
        checkpoint=replace(s.checkpoint, every_steps=50),
        eval=EvalCfg(set="short_sft_eval", frames=32),
    )


# The letter-binding curriculum measured by make all on 2026-12-03 (docs/recipe.md#letters-the-pointer-curriculum-in-make-all),
# as --set overrides of ``longvila train all``: stage 2 first teaches text pointer questions on one line, then in
# the VideoMME chat prompt (32 per rank, text only), then trains on its captions with two pointer questions in
# every micro-batch; stages 3 and 5 keep one per micro-batch, half over the sets' option texts.
POINTER_CURRICULUM = (
    "2:data.curriculum=0:32:1250:1.0:oneline,0:32:500:1.0:videomme,1:16:2000", "2:data.pointers=2",
    "2:schedule.warmup_steps=100", "3:data.pointers=1", "3:data.pointer_text_frac=0.5",
    "5:data.pointers=1", "5:data.pointer_text_frac=0.5",
)


# The letter phases of stage 5 measured on 2026-12-07 (docs/recipe.md#letters-four-option-code-questions-in-stage-5-2026-12-07),
# run E3, as --set overrides: after the first 32-frame phase, four-option code questions on a card among one
# haystack frame, 64 an optimizer step, on one plain line (500 steps: the model leaves the chance plateau after
# ~150), then in the VideoMME chat prompt (200), then 32-frame clips with every needle, card and set question
# four-option; from there on half of them. VideoMME letters 25.6% -> 48.3% at 64 frames (likelihood 53.9%), long
# videos 26.7% at 8 frames -> 46.7% at 64 and 43.3% at 2,048; held-out QA 38.25%; but the printed needle grid fell
# to 95.7% and stage 5 took 1,527 s. Asking the needles openly after the letter phases (E4) kept fewer letters
# (37.8% at 64 frames) and the grid at 98.7%. The published stage 5 (run E11) is E3 with the schedule held over
# the letter phases and a 900-step final phase; to rerun E3, give this set after ``STAGE5_BEFORE_LETTERS``.
LETTER_CURRICULUM = (
    "5:data.curriculum=32:16:300,1:64:500:0:oneline:needle_frac=1:needle_mc_frac=1,"
    "1:64:200:0:videomme:needle_frac=1:needle_mc_frac=1,32:16:200:needle_mc_frac=1:qa_mc_frac=1,"
    "64:8:100:needle_mc_frac=0.5,128:8:80:needle_mc_frac=0.5,256:4:60:needle_mc_frac=0.5,"
    "512:2:80:needle_mc_frac=0.5,1024:1:150:needle_mc_frac=0.5,1500:1:200:needle_mc_frac=0.5,"
    "32:16:600:needle_mc_frac=0.5:qa_mc_frac=0.5",
    # the LM head at the labelled positions only: the letter phases' rows are long prompts with one label
    "5:parallel.labelled_logits=true",
)

# Stage 5 as published before the letter phases (make all on 2026-12-04, commit b04f621: needle grid 99.8%, VideoMME
# letters at chance, 25.6% at 64 frames), as --set overrides of ``longvila train all``: the long phases without
# four-option questions and a 600-step final phase, the cosine over every step, the full LM head. The two override
# sets above were measured on this stage 5; give them after it to rerun those runs.
STAGE5_BEFORE_LETTERS = (
    "5:data.curriculum=32:16:300,64:8:100,128:8:80,256:4:60,512:2:80,1024:1:150,1500:1:200,32:16:600",
    "5:parallel.labelled_logits=false",
)


STAGES = {1: stage1, 2: stage2, 3: stage3, 4: stage4, 5: stage5}


def get_stage(n: int | str) -> StageConfig:
    try:
        return STAGES[int(n)]()
    except (KeyError, ValueError):
        raise ConfigError(f"unknown stage {n!r}: choose one of {sorted(STAGES)}") from None


# ---------------------------------------------------------------- overrides
def _special(value: str, tp: typing.Any, key: str) -> typing.Any:
    """The recipe's own override forms: curriculum phases ``frames:batch:steps`` and RoPE rows
    ``length:theta`` (comma-separated); every other type goes to ``longvila.utils.parse_typed``."""
    args = typing.get_args(tp) if typing.get_origin(tp) is tuple else ()
    parts = [v for v in value.split(",") if v.strip()]
    if args and args[0] is Phase:
        from longvila.utils import parse_typed

        conv = {"cards": int, "hold": lambda v: parse_typed(v, bool, "hold")}  # the other phase keys are shares
        phases = []
        for p in parts:
            xs = p.split(":")
            pos = [x for x in xs if "=" not in x]
            named = dict(x.split("=", 1) for x in xs[len(pos):] if "=" in x)
            unknown = sorted(set(named) - set(PHASE_KEYS + PHASE_OWN_KEYS))
            if unknown:
                raise ConfigError(f"{key}: phase {p!r}: unknown phase key {unknown[0]!r}; choose from "
                                  f"{', '.join(PHASE_KEYS + PHASE_OWN_KEYS)}")
            try:
                if len(pos) not in (3, 4, 5) or len(pos) + len(named) != len(xs):
                    raise ValueError
                f, b, n = (int(x) for x in pos[:3])
                ptr = float(pos[3]) if len(pos) >= 4 else 0.0
                own = {k: conv.get(k, float)(v) for k, v in named.items()}
            except ValueError:
                raise ConfigError(f"{key}: phase {p!r} is not frames:batch:steps[:pointer[:form]][:key=value...] "
                                  f"(keys: {', '.join(PHASE_KEYS + PHASE_OWN_KEYS)})") from None
            phases.append(Phase(f, b, n, ptr, *pos[4:5], **own))
        return tuple(phases)
    if args and typing.get_origin(args[0]) is tuple:  # rope_schedule rows "length:theta"
        try:
            return tuple((int(p.split(":")[0]), float(p.split(":")[1])) for p in parts)
        except (ValueError, IndexError):
            raise ConfigError(f"{key}: expected length:theta rows, got {value!r}") from None
    return NotImplemented


def _parse(value: str, tp: typing.Any, key: str) -> typing.Any:
    from longvila.utils import parse_typed

    try:
        return parse_typed(value, tp, key, special=_special)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def apply_overrides(cfg: StageConfig, overrides: list[str] | tuple[str, ...]) -> StageConfig:
    """Apply ``group.field=value`` (or top-level ``field=value``) strings; unknown keys raise ConfigError."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        parts = key.split(".")
        if len(parts) > 2 or not all(parts):
            raise ConfigError(f"unknown config key {key!r}")
        top_hints = typing.get_type_hints(StageConfig)
        if parts[0] not in top_hints or parts[0] == "stage":
            raise ConfigError(f"unknown config key {key!r} (groups/fields: {sorted(top_hints)})")
        if len(parts) == 1:
            if dataclasses.is_dataclass(top_hints[parts[0]]):
                raise ConfigError(f"{key!r} is a group; set one of its fields ({key}.<field>=...)")
            cfg = replace(cfg, **{parts[0]: _parse(value, top_hints[parts[0]], key)})
            continue
        group_tp = top_hints[parts[0]]
        if not dataclasses.is_dataclass(group_tp):
            raise ConfigError(f"unknown config key {key!r}: {parts[0]!r} is not a group")
        hints = typing.get_type_hints(group_tp)
        if parts[1] not in hints:
            raise ConfigError(f"unknown config key {key!r} (fields of {parts[0]}: {sorted(hints)})")
        group = getattr(cfg, parts[0])
        cfg = replace(cfg, **{parts[0]: replace(group, **{parts[1]: _parse(value, hints[parts[1]], key)})})
    validate(cfg)
    return cfg


def validate(cfg: StageConfig, world_size: int | None = None) -> None:
    """Check values and, given the world size, the dp x sp layout; raise ConfigError naming the field."""
    bad = [m for m in cfg.model.train if m not in MODULES]
    if bad:
        raise ConfigError(f"model.train: unknown module(s) {bad}; choose from {list(MODULES)}")
    if cfg.schedule.kind not in ("cosine", "constant"):
        raise ConfigError(f"schedule.kind={cfg.schedule.kind!r}: choose 'cosine' or 'constant'")
    if cfg.parallel.zero_stage not in (0, 1, 2):
        raise ConfigError(f"parallel.zero_stage={cfg.parallel.zero_stage}: supported stages are 0, 1, 2")
    from longvila.parallel.backends import BACKENDS

    if cfg.parallel.attn_backend not in BACKENDS:
        raise ConfigError(f"parallel.attn_backend={cfg.parallel.attn_backend!r}: choose one of {list(BACKENDS)}")
    for name, v in (("schedule.grad_accum", cfg.schedule.grad_accum), ("parallel.sp_ulysses",
                    cfg.parallel.sp_ulysses), ("parallel.sp_ring", cfg.parallel.sp_ring),
                    ("checkpoint.every_steps", cfg.checkpoint.every_steps)):
        if v < 1:
            raise ConfigError(f"{name}={v} must be >= 1")
    if cfg.total_steps < 1:
        raise ConfigError("schedule.steps (or the curriculum) must give at least one step")
    if cfg.data.curriculum and sum(p.steps for p in cfg.data.curriculum if not p.hold) < 1:
        raise ConfigError("data.curriculum: every phase holds the schedule (hold=1): nothing left to schedule")
    for i, ph in enumerate(cfg.data.curriculum):
        if ph.frames < 0 or ph.batch < 1 or ph.steps < 0 or not 0.0 <= ph.pointer <= 1.0:
            raise ConfigError(f"data.curriculum[{i}]={ph}: needs frames >= 0, batch >= 1, steps >= 0 and "
                              "pointer in [0, 1]")
        for k in (key for key in PHASE_KEYS if key != "cards"):  # the shares
            if getattr(ph, k) is not None and not 0.0 <= getattr(ph, k) <= 1.0:
                raise ConfigError(f"data.curriculum[{i}]: {k}={getattr(ph, k)} must be in [0, 1]")
        if ph.cards is not None and ph.cards < 0:
            raise ConfigError(f"data.curriculum[{i}]: cards={ph.cards} must be >= 0")
        if ph.form not in POINTER_FORMS:
            raise ConfigError(f"data.curriculum[{i}]: pointer form {ph.form!r}; choose one of "
                              f"{', '.join(POINTER_FORMS)}")
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr} must be > 0")
    if cfg.optim.vision_lr_scale <= 0:
        raise ConfigError(f"optim.vision_lr_scale={cfg.optim.vision_lr_scale} must be > 0")
    if not cfg.data.sets:
        raise ConfigError("data.sets is empty")
    if cfg.data.cards < 0 or cfg.data.pointers < 0:
        raise ConfigError(f"data.cards={cfg.data.cards} and data.pointers={cfg.data.pointers} must be >= 0")
    for name, v in (("data.needle_frac", cfg.data.needle_frac), ("data.needle_mc_frac", cfg.data.needle_mc_frac),
                    ("data.mc_text_frac", cfg.data.mc_text_frac), ("data.pointer_text_frac", cfg.data.pointer_text_frac),
                    ("data.code_repeat_frac", cfg.data.code_repeat_frac), ("data.code_near_frac", cfg.data.code_near_frac),
                    ("data.needle_hand_frac", cfg.data.needle_hand_frac)):
        if not 0.0 <= v <= 1.0:
            raise ConfigError(f"{name}={v} must be in [0, 1]")
    from longvila.pipelines.datasource import LOSS_WEIGHTING

    if cfg.data.loss_weighting not in LOSS_WEIGHTING:
        raise ConfigError(f"data.loss_weighting={cfg.data.loss_weighting!r}: choose one of {sorted(LOSS_WEIGHTING)}")
    vp = cfg.vision_pretrain
    if vp.steps < 0 or (vp.steps and (vp.batch < 2 or vp.heldout < 2 or vp.lr <= 0 or vp.dim < 1 or not vp.sets
                                      or vp.fresh_cards < 0 or not 0.0 <= vp.hand_frac <= 1.0)):
        raise ConfigError(f"vision_pretrain: needs steps >= 0, batch >= 2, heldout >= 2, lr > 0, dim >= 1, sets, "
                          f"fresh_cards >= 0 and hand_frac in [0, 1]; got {vp}")
    cfg.rope()
    if cfg.model.dynamic_yarn_positions < 0:
        raise ConfigError(f"model.dynamic_yarn_positions={cfg.model.dynamic_yarn_positions} must be >= 0")
    if cfg.model.logn_base < 0 or cfg.model.logn_base == 1:
        raise ConfigError(f"model.logn_base={cfg.model.logn_base}: give a base of >= 2 positions (0 keeps the "
                          "checkpoint's setting)")
    if world_size is not None and world_size % cfg.sp:
        raise ConfigError(
            f"layout does not fit: world size {world_size} is not divisible by the sequence-parallel "
            f"degree sp_ulysses*sp_ring = {cfg.parallel.sp_ulysses}*{cfg.parallel.sp_ring} = {cfg.sp}"
        )
