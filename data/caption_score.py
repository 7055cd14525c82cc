"""How good a clip captioner is: word accuracy of its captions of held-out world clips against the ground truth.

The long-video pipeline (``data/longvideo.py``) trusts its captioner; this measures one. Held-out videos of the
synthetic world (eval seeds, eval digits) are cut into clips, the captioner describes each clip, and the
captions are compared with ``questions.caption_clip``, the ground-truth caption from the event log.

Word accuracy = 1 - (substitutions + deletions + insertions) / reference words, summed over all clips before
dividing (a corpus figure, so long captions weigh by their length), on lower-case words without punctuation;
floored at 0 (a caption far longer than the truth would otherwise go negative).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from longvila.data import questions as Q
from longvila.data import world


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def word_errors(hyp: str, ref: str) -> tuple[int, int]:
    """(edit distance in words between ``hyp`` and ``ref``, number of words of ``ref``)."""
    h, r = words(hyp), words(ref)
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i]
        for j, hw in enumerate(h, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw)))
        prev = cur
    return prev[-1], len(r)


def word_accuracy(pairs: Iterable[tuple[str, str]]) -> float:
    """Corpus word accuracy of (caption, ground truth) pairs, in [0, 1]."""
    err = ref = 0
    for hyp, truth in pairs:
        e, n = word_errors(hyp, truth)
        err, ref = err + e, ref + n
    if ref == 0:
        raise ValueError("word_accuracy: the ground-truth captions have no words")
    return max(0.0, 1.0 - err / ref)


def score_world_captions(captioner, num_videos: int = 20, num_frames: int = 64, clip_frames: int = 32,
                         seed: int = 0) -> dict:
    """Caption the clips of ``num_videos`` held-out world videos with ``captioner`` (an object with
    ``caption(list of (n, H, W, 3) uint8) -> list[str]``, as ``longvideo.load_captioner`` returns) and score
    them: {"word_accuracy", "clips", "examples" (the first three (caption, truth) pairs)}."""
    pairs = []
    for v in range(num_videos):
        vid = world.make_video(world.EVAL_SEED_BASE + 900_000_000 + seed * 10_000 + v, num_frames, "eval")
        bounds = [(a, min(num_frames, a + clip_frames)) for a in range(0, num_frames, clip_frames)]
        caps = captioner.caption([vid.frames[a:b] for a, b in bounds])
        pairs += [(c, Q.caption_clip(vid.events, a, b)) for c, (a, b) in zip(caps, bounds, strict=True)]
    return {"word_accuracy": word_accuracy(pairs), "clips": len(pairs), "examples": pairs[:3]}
