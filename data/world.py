"""The embedded synthetic video world: deterministic scenes with a ground-truth event log.

Every video is a sequence of scenes separated by cuts. A scene has a background (plain colour, a texture
or a darkened photo from scikit-image's bundled images) and up to ``max_objects`` objects: shapes in bright
colours or handwritten digits (scikit-learn's bundled 8x8 digits). Objects appear, move to a neighbouring
cell, change colour and leave; each such change is one ``Event`` logged at the frame it first shows.

Design choices:
- A needle card (``code`` option) overlays the scene for its frames; the scene's own events go on
  underneath and stay in the log.
- The frame is a 3x3 grid of cells named as in ``vocab.POSITIONS`` ("top left" ... "bottom right"). An
  object at rest sits at its cell's centre and a cell holds at most one object, so "where" has one exact
  answer and objects never overlap. A move glides to the neighbouring cell over a few frames.
- Inside a scene, (colour, shape) is unique among the present objects, so "the red circle" names one object.
- Backgrounds are dim (max channel <= 100) and object colours bright, so objects read on any background.
  The needle image (``code_image``) is dark ink on white paper with a black frame: no scene frame is white,
  so it is visually distinct from the haystack.
- Determinism: the random stream is ``numpy.random.default_rng([seed, split_id])``. The split is part of the
  stream, so a train video and an eval video never share a stream even for the same integer seed; builders
  also draw train and eval seeds from disjoint ranges (``TRAIN_SEED_BASE``, ``EVAL_SEED_BASE``).
- Digit images are split by index (documented and tested): scikit-learn's 1,797 digits, indices
  ``[0, 1440)`` are the train split and ``[1440, 1797)`` the eval split (every class has 33-37 eval images).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from longvila.data.vocab import COLORS, POSITIONS, SHAPES, SIZES

SPLITS = ("train", "eval")
DIGIT_SPLIT_INDEX = 1440  # digits [0, 1440) train, [1440, 1797) eval
TRAIN_SEED_BASE = 0
EVAL_SEED_BASE = 1_000_000_000

COLOR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30), "green": (40, 210, 40), "blue": (50, 90, 255), "yellow": (245, 235, 30),
    "cyan": (30, 225, 235), "magenta": (235, 40, 235), "orange": (255, 145, 0), "purple": (150, 60, 230),
    "white": (245, 245, 245), "gray": (150, 150, 150),
}
BACKGROUND_RGB: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0), "dark blue": (10, 15, 70), "dark green": (10, 60, 15), "gray": (60, 60, 60),
}
TEXTURES = ("brick", "grass", "gravel")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
SIZE_FRAC = {"small": 0.19, "medium": 0.25, "large": 0.31}  # object side / frame side
DIGIT_FRAC = 0.31
OBJECT_SHAPES = tuple(SHAPES) + ("digit",)


@dataclass
class Event:
    """One change in the video, logged at the first frame that shows it.

    ``kind``: "cut" (new scene; ``background``), "appear", "move" (``direction``, ``from_position``,
    ``end_frame`` = first frame at rest in the new cell), "color" (``from_color``), "leave" (position where
    it was), "code" (a needle card showing ``code``). ``x``, ``y`` are the pixel centre after the event.
    """

    frame: int
    time: float
    kind: str
    obj: int | None = None
    shape: str | None = None
    color: str | None = None
    size: str | None = None
    digit: int | None = None
    position: str | None = None
    x: int | None = None
    y: int | None = None
    from_color: str | None = None
    from_position: str | None = None
    direction: str | None = None
    end_frame: int | None = None
    background: str | None = None
    code: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"event has unknown keys {sorted(unknown)}")
        return cls(**d)


@dataclass
class Video:
    """A rendered video: ``frames`` (N, H, W, 3) uint8, its event log, frame rate, seed and split."""

    frames: np.ndarray
    events: list[Event]
    fps: float
    seed: int
    split: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


@dataclass
class WorldOptions:
    """Knobs of ``make_video`` (all optional keyword arguments)."""

    height: int = 32
    width: int = 32
    fps: float = 2.0
    scene_frames: tuple[int, int] = (16, 48)  # scene length range, frames
    event_rate: float = 0.12  # chance of an event per frame inside a scene
    max_objects: int = 3
    digit_prob: float = 0.25  # chance that a new object is a handwritten digit
    initial_objects: tuple[int, int] = (1, 2)  # objects appearing on a scene's first frame (range)
    code: str | None = None  # a needle code shown as a card ...
    code_frame: int | None = None  # ... at this frame (random if None)
    code_frames: int = 1  # ... for this many frames
    code_style: str = "print"  # ... printed or handwritten (``CARD_STYLES``)
    render: bool = True  # False: event log only, ``frames`` is empty (0, H, W, 3) (text-only uses)


# --------------------------------------------------------------------------------------------- assets
def _split_id(split: str) -> int:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    return SPLITS.index(split)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return (d.images / 16.0).astype(np.float32), d.target.astype(np.int64)


def digit_indices(split: str, digit: int | None = None) -> np.ndarray:
    """Indices into scikit-learn's digits that belong to ``split`` (optionally of one class)."""
    _split_id(split)
    images, target = _digits()
    idx = np.arange(DIGIT_SPLIT_INDEX) if split == "train" else np.arange(DIGIT_SPLIT_INDEX, len(images))
    return idx if digit is None else idx[target[idx] == digit]


@functools.lru_cache(maxsize=4096)
def digit_glyph(index: int, size: int) -> np.ndarray:
    """Handwritten digit ``index`` as an ink intensity map (size, size) float32 in [0, 1]."""
    from skimage.transform import resize

    images, _ = _digits()
    return np.clip(resize(images[index], (size, size), order=1, anti_aliasing=False), 0, 1).astype(np.float32)


@functools.lru_cache(maxsize=16)
def _asset(name: str) -> np.ndarray:
    import skimage.data

    im = getattr(skimage.data, name)()
    return im if im.ndim == 3 else np.repeat(im[..., None], 3, axis=2)


@functools.lru_cache(maxsize=64)
def shape_mask(shape: str, side: int) -> np.ndarray:
    """Boolean mask (side, side) of a shape."""
    from skimage.draw import polygon

    s = side
    yy, xx = np.mgrid[0:s, 0:s] + 0.5
    c = s / 2.0
    r = s / 2.0
    if shape == "circle":
        m = (yy - c) ** 2 + (xx - c) ** 2 <= r * r
    elif shape == "ring":
        d2 = (yy - c) ** 2 + (xx - c) ** 2
        m = (d2 <= r * r) & (d2 >= (r * 0.5) ** 2)
    elif shape == "square":
        m = np.ones((s, s), bool)
    elif shape == "diamond":
        m = np.abs(yy - c) + np.abs(xx - c) <= r
    elif shape == "cross":
        w = max(1.0, s / 6.0)
        m = (np.abs(yy - c) <= w) | (np.abs(xx - c) <= w)
    elif shape == "bar":
        m = np.abs(yy - c) <= max(1.0, s / 5.0)
    elif shape in ("triangle", "star"):
        m = np.zeros((s, s), bool)
        if shape == "triangle":
            pts = [(0, c), (s, 0), (s, s)]
        else:
            ang = np.pi / 2 + np.arange(10) * np.pi / 5
            rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
            pts = list(zip(c - rad * np.sin(ang), c + rad * np.cos(ang), strict=True))
        rr, cc = polygon([p[0] for p in pts], [p[1] for p in pts], (s, s))
        m[rr, cc] = True
    else:
        raise ValueError(f"unknown shape {shape!r}; known: {list(SHAPES)}")
    return m


def cell_center(position: str, height: int, width: int) -> tuple[int, int]:
    """Pixel centre (x, y) of a named cell of the 3x3 grid."""
    i = POSITIONS.index(position)
    row, col = divmod(i, 3)
    return int((col + 0.5) * width / 3), int((row + 0.5) * height / 3)


def position_name(x: float, y: float, height: int, width: int) -> str:
    col = min(2, max(0, int(x * 3 // width)))
    row = min(2, max(0, int(y * 3 // height)))
    return POSITIONS[row * 3 + col]


# --------------------------------------------------------------------------------------------- drawing
def _background(name: str, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A dim background (H, W, 3) uint8 (max channel <= 100)."""
    if name in BACKGROUND_RGB:
        return np.broadcast_to(np.array(BACKGROUND_RGB[name], np.uint8), (height, width, 3)).copy()
    from skimage.transform import resize

    src = _asset(str(rng.choice(TEXTURES if name == "textured" else PHOTOS)))
    side = int(rng.integers(min(src.shape[:2]) // 4, min(src.shape[:2]) // 2 + 1))
    y0 = int(rng.integers(0, src.shape[0] - side + 1))
    x0 = int(rng.integers(0, src.shape[1] - side + 1))
    crop = resize(src[y0:y0 + side, x0:x0 + side], (height, width), anti_aliasing=True)  # float in [0, 1]
    if name == "textured":
        tint = rng.uniform(0.4, 1.0, size=3)
        crop = crop * tint
    return (crop * 100).clip(0, 100).astype(np.uint8)


def _object_ink(obj: dict, height: int) -> np.ndarray:
    """Ink map (side, side) float in [0, 1] of an object."""
    if obj["shape"] == "digit":
        return digit_glyph(obj["digit_index"], max(5, round(DIGIT_FRAC * height)))
    return shape_mask(obj["shape"], max(3, round(SIZE_FRAC[obj["size"]] * height))).astype(np.float32)


def draw(frame: np.ndarray, ink: np.ndarray, x: float, y: float, rgb: tuple[int, int, int]) -> None:
    """Blend ``ink`` (s, s) centred at (x, y) into ``frame`` (H, W, 3) uint8 in place (clipped at edges)."""
    s = ink.shape[0]
    y0, x0 = int(round(y - s / 2)), int(round(x - s / 2))
    h, w = frame.shape[:2]
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + s), min(w, x0 + s)
    if ys >= ye or xs >= xe:
        return
    a = ink[ys - y0:ye - y0, xs - x0:xe - x0, None]
    region = frame[ys:ye, xs:xe].astype(np.float32)
    frame[ys:ye, xs:xe] = (region * (1 - a) + np.array(rgb, np.float32) * a + 0.5).astype(np.uint8)


def object_ink_mask(event: Event | dict, height: int = 32, width: int = 32) -> np.ndarray:
    """Boolean (H, W) mask of the pixels fully inked by the object an appear/color event describes."""
    e = event.to_dict() if isinstance(event, Event) else event
    if e.get("shape") == "digit":
        raise ValueError("digit ink depends on the handwriting; use the video's meta['digit_index']")
    ink = shape_mask(e["shape"], max(3, round(SIZE_FRAC[e["size"]] * height))).astype(np.float32)
    canvas = np.zeros((height, width, 3), np.uint8)
    draw(canvas, ink, e["x"], e["y"], (255, 255, 255))
    return canvas[..., 0] == 255


# Printed cards use the typefaces matplotlib bundles (a dependency, so every install has the same files):
# upright regular and bold cuts of five families. A printed digit is legible to any reader (a pixel SVM
# trained on other renderings reads 99.95% of them); what a printed card holds out is its code and its
# rendering (typeface, size, offset and ink drawn afresh), not the glyph shapes.
PRINT_FONTS = ("DejaVuSans", "DejaVuSans-Bold", "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSerif",
               "DejaVuSerif-Bold", "STIXGeneral", "STIXGeneralBol", "cmr10", "cmb10", "cmss10", "cmtt10")
CARD_STYLES = ("print", "hand")


@functools.lru_cache(maxsize=256)
def _font(name: str, size: int):
    import os

    import matplotlib
    from PIL import ImageFont

    return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", f"{name}.ttf"), size)


@functools.lru_cache(maxsize=32)
def _digit_height(name: str) -> float:
    """Height of the digits' ink box per point of font size."""
    from PIL import Image, ImageDraw

    box = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), "0123456789", font=_font(name, 100))
    return (box[3] - box[1]) / 100.0


@functools.lru_cache(maxsize=4096)
def _print_bitmap(font: str, size: int, digit: int, side: int, margin: int) -> np.ndarray:
    """``digit`` in ``font`` at ``size`` points, centred in a side x side box with ``margin`` pixels around it:
    float32 (side + 2 margin, side + 2 margin) in [0, 1]. Cached: a card only shifts and inks it."""
    from PIL import Image, ImageDraw

    im = Image.new("L", (side + 2 * margin, side + 2 * margin), 0)
    draw_ = ImageDraw.Draw(im)
    f = _font(font, size)
    x0, y0, x1, y1 = draw_.textbbox((0, 0), str(digit), font=f)
    draw_.text((margin + (side - (x1 - x0)) // 2 - x0, margin + (side - (y1 - y0)) // 2 - y0), str(digit),
               fill=255, font=f)
    out = np.asarray(im, np.float32) / 255.0
    out.flags.writeable = False
    return out


def print_glyph(digit: int, font: str, rng: np.random.Generator, side: int) -> np.ndarray:
    """A printed digit as an ink map (side, side) float32 in [0, 1]: ``font`` sized so that digits are 80-95%
    of the side tall, centred with a jitter of up to side/16 pixels, ink strength 0.8-1."""
    tall = rng.uniform(0.8, 0.95) * side
    size = max(4, int(round(tall / _digit_height(font))))
    j = max(1, side // 16)
    dx, dy = (int(v) for v in rng.integers(-j, j + 1, 2))
    window = _print_bitmap(font, size, int(digit), side, j)[j - dy:j - dy + side, j - dx:j - dx + side]
    return window * np.float32(rng.uniform(0.8, 1.0))


def card_grid(n_digits: int) -> int:
    """Side of the square grid of cells a card of ``n_digits`` is laid out on (the digits, then the marker)."""
    return int(np.ceil(np.sqrt(n_digits + 1)))


def code_image(code: str, split: str = "eval", rng: np.random.Generator | int | None = None,
               height: int = 32, width: int = 32, style: str = "print") -> np.ndarray:
    """A needle card: ``code`` (digits) in dark ink on white paper with a black frame. Returns (H, W, 3) uint8.

    Layout: a g x g grid of cells (g = ``card_grid(len(code))``: 2 for 3 digits), one digit per cell in
    reading order, and a black square in the last cell (a card, never a scene, and its orientation). At
    32x32 a 3-digit card puts each digit on one 16x16 patch of the tiny vision tower.
    ``style``: "print" (one of ``PRINT_FONTS`` per card) or "hand" (each digit a handwritten digit of
    ``split``'s share of scikit-learn's digits: the eval split's writers are unseen in training).
    """
    if not code or not code.isdigit():
        raise ValueError(f"code must be a non-empty string of digits, not {code!r}")
    if style not in CARD_STYLES:
        raise ValueError(f"card style must be one of {CARD_STYLES}, not {style!r}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    g = card_grid(len(code))
    ch, cw = height // g, width // g
    img = np.full((height, width, 3), 250, np.float32)
    img[0, :] = img[-1, :] = img[:, 0] = img[:, -1] = 0  # black frame: a card, not a scene
    font = str(rng.choice(PRINT_FONTS)) if style == "print" else None
    side = min(ch, cw) - 2  # one pixel of paper around each glyph
    for i, c in enumerate(code):
        if style == "print":
            glyph = print_glyph(int(c), font, rng, side)
        else:
            glyph = digit_glyph(int(rng.choice(digit_indices(split, int(c)))), side)
        r, k = divmod(i, g)
        y0, x0 = r * ch + (ch - side) // 2, k * cw + (cw - side) // 2
        img[y0:y0 + side, x0:x0 + side] *= 1 - glyph[..., None]
    m = max(2, side // 2)  # the marker: a black square in the last cell
    r, k = divmod(g * g - 1, g)
    y0, x0 = r * ch + (ch - m) // 2, k * cw + (cw - m) // 2
    img[y0:y0 + m, x0:x0 + m] = 0
    return (img + 0.5).clip(0, 255).astype(np.uint8)


def card_style(rng: np.random.Generator, hand_frac: float) -> str:
    """One card's style: "hand" with probability ``hand_frac``, else "print" (one draw of ``rng``)."""
    return "hand" if rng.random() < hand_frac else "print"


def random_code(rng: np.random.Generator, n_digits: int = 3, repeat_frac: float = 0.0) -> str:
    """``n_digits`` random digits; with probability ``repeat_frac`` one digit is copied onto another place, so
    the code repeats a digit (uniform codes of 3 digits repeat one 28% of the time, the first two places
    10%). With ``repeat_frac`` 0 no extra number is drawn, so the stream is that of plain uniform codes."""
    digits = [int(d) for d in rng.integers(0, 10, n_digits)]
    if repeat_frac and n_digits > 1 and rng.random() < repeat_frac:
        src, dst = (int(i) for i in rng.choice(n_digits, 2, replace=False))
        digits[dst] = digits[src]
    return "".join(str(d) for d in digits)


def random_card(rng: np.random.Generator, split: str, height: int, width: int, hand_frac: float,
                n_digits: int = 3, repeat_frac: float = 0.0) -> tuple[str, np.ndarray]:
    """A freshly drawn (code, card): a code (``random_code``), a style (``card_style``), then the card
    (``code_image``), all drawn from ``rng`` in that order."""
    code = random_code(rng, n_digits, repeat_frac)
    return code, code_image(code, split, rng, height, width, card_style(rng, hand_frac))


def card_cells(cards: np.ndarray, n_digits: int) -> np.ndarray:
    """The digit cells of code cards, for readers: (B, H, W, 3) uint8 -> (n_digits, B, ch * cw) float32 grey
    levels in [0, 1], place by place (the layout of ``code_image``)."""
    g = card_grid(n_digits)
    ch, cw = cards.shape[1] // g, cards.shape[2] // g
    grey = cards.astype(np.float32).mean(-1) / 255.0
    out = [grey[:, r * ch:(r + 1) * ch, k * cw:(k + 1) * cw] for r, k in (divmod(i, g) for i in range(n_digits))]
    return np.stack(out).reshape(n_digits, len(cards), ch * cw)


# --------------------------------------------------------------------------------------------- the world
def _new_object(rng, split, objects, free, next_id, digit_prob) -> dict:
    taken = {(o["color"], o["shape"]) for o in objects.values()}
    for _ in range(50):
        is_digit = rng.random() < digit_prob
        shape = "digit" if is_digit else str(rng.choice(SHAPES))
        color = str(rng.choice(COLORS))
        if (color, shape) not in taken:
            break
    size = "large" if is_digit else str(rng.choice(SIZES))
    if shape == "star" and size == "small":  # a 6-pixel star reads as a blob
        size = "medium"
    obj = {"id": next_id, "shape": shape, "color": color, "size": size, "position": str(rng.choice(free))}
    if is_digit:
        obj["digit"] = int(rng.integers(10))
        obj["digit_index"] = int(rng.choice(digit_indices(split, obj["digit"])))
    return obj


def make_video(seed: int, num_frames: int, split: str = "train", **opts: Any) -> Video:
    """Render ``num_frames`` frames of the world from ``seed``; options are ``WorldOptions`` fields.

    Returns a ``Video`` with ``frames`` (num_frames, H, W, 3) uint8 and its event log in frame order.
    """
    o = WorldOptions(**opts)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, not {num_frames}")
    rng = np.random.default_rng([int(seed), _split_id(split)])
    H, W = o.height, o.width
    frames = np.empty((num_frames if o.render else 0, H, W, 3), np.uint8)
    events: list[Event] = []
    next_id = 0
    digit_index: dict[int, int] = {}

    def log(f, kind, obj=None, **kw):
        base = {}
        if obj is not None:
            x, y = obj["xy"]
            base = dict(obj=obj["id"], shape=obj["shape"], color=obj["color"], size=obj["size"],
                        digit=obj.get("digit"), position=obj["position"], x=int(round(x)), y=int(round(y)))
        base.update(kw)
        events.append(Event(frame=f, time=round(f / o.fps, 3), kind=kind, **base))

    f = 0
    while f < num_frames:
        end = min(num_frames, f + int(rng.integers(o.scene_frames[0], o.scene_frames[1] + 1)))
        bg_name = str(rng.choice(list(BACKGROUND_RGB) + ["textured", "photo"]))
        bg = _background(bg_name, rng, H, W)  # drawn even when not rendering: keeps the stream identical
        log(f, "cut", background=bg_name)
        objects: dict[int, dict] = {}
        for t in range(f, end):
            first = t == f
            n_act = int(rng.integers(o.initial_objects[0], o.initial_objects[1] + 1)) if first else 0
            if not first and rng.random() < o.event_rate:
                n_act = 1
            for _ in range(n_act):
                free = [p for p in POSITIONS if p not in {ob["position"] for ob in objects.values()}
                        and p not in {ob.get("target") for ob in objects.values()}]
                idle = [ob for ob in objects.values() if "target" not in ob]
                acts = (["appear"] if len(objects) < o.max_objects and free else [])
                if idle and not first:
                    acts += ["move", "color", "leave"]
                act = str(rng.choice(acts)) if acts else None
                if act == "appear":
                    ob = _new_object(rng, split, objects, free, next_id, o.digit_prob)
                    next_id += 1
                    ob["xy"] = cell_center(ob["position"], H, W)
                    objects[ob["id"]] = ob
                    if "digit_index" in ob:
                        digit_index[ob["id"]] = ob["digit_index"]
                    log(t, "appear", ob)
                elif act == "color":
                    ob = idle[int(rng.integers(len(idle)))]
                    taken = {(q["color"], q["shape"]) for q in objects.values()}
                    options = [c for c in COLORS if (c, ob["shape"]) not in taken]
                    if options:
                        old, ob["color"] = ob["color"], str(rng.choice(options))
                        log(t, "color", ob, from_color=old)
                elif act == "leave":
                    ob = idle[int(rng.integers(len(idle)))]
                    log(t, "leave", ob)
                    del objects[ob["id"]]
                elif act == "move":
                    ob = idle[int(rng.integers(len(idle)))]
                    moves = _neighbours(ob["position"], free)
                    if moves:
                        direction, target = moves[int(rng.integers(len(moves)))]
                        steps = min(int(rng.integers(2, 5)), end - t)  # arrives inside the scene
                        ob.update(target=target, start=ob["xy"], t0=t, steps=steps)
                        old = ob["position"]
                        _step(ob, t, H, W)
                        log(t, "move", ob, direction=direction, from_position=old, end_frame=t + steps - 1,
                            position=target)
            for ob in objects.values():
                if "target" in ob and ob["t0"] != t:
                    _step(ob, t, H, W)
            if not o.render:
                continue
            frame = bg.copy()
            for ob in objects.values():
                draw(frame, _object_ink(ob, H), *ob["xy"], COLOR_RGB[ob["color"]])
            frames[t] = frame
        f = end

    if o.code is not None:
        n = max(1, o.code_frames)
        at = int(rng.integers(0, max(1, num_frames - n + 1))) if o.code_frame is None else int(o.code_frame)
        if not 0 <= at <= num_frames - n:
            raise ValueError(f"code_frame {at} with code_frames {n} does not fit in {num_frames} frames")
        card = code_image(o.code, split, rng, H, W, o.code_style)
        if o.render:
            frames[at:at + n] = card
        events.append(Event(frame=at, time=round(at / o.fps, 3), kind="code", code=o.code, end_frame=at + n - 1))
        events.sort(key=lambda e: (e.frame, e.kind != "cut"))
    return Video(frames=frames, events=events, fps=o.fps, seed=int(seed), split=split,
                 meta={"digit_index": digit_index, "height": H, "width": W})


_DIRS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}


def _neighbours(position: str, free: list[str]) -> list[tuple[str, str]]:
    row, col = divmod(POSITIONS.index(position), 3)
    out = []
    for name, (dr, dc) in _DIRS.items():
        r, c = row + dr, col + dc
        if 0 <= r < 3 and 0 <= c < 3 and POSITIONS[r * 3 + c] in free:
            out.append((name, POSITIONS[r * 3 + c]))
    return out


def _step(ob: dict, t: int, H: int, W: int) -> None:
    """Advance a moving object to frame ``t``: linear glide, at rest in the target cell at t0+steps-1."""
    k = (t - ob["t0"] + 1) / ob["steps"]
    tx, ty = cell_center(ob["target"], H, W)
    sx, sy = ob["start"]
    ob["xy"] = (sx + (tx - sx) * min(1.0, k), sy + (ty - sy) * min(1.0, k))
    if k >= 1.0:
        ob["position"] = ob.pop("target")
        for key in ("start", "t0", "steps"):
            ob.pop(key)


def make_image(seed: int, split: str = "train", **opts: Any) -> Video:
    """One still image of the world: a single-frame ``Video`` (frames (1, H, W, 3)) with its objects logged."""
    opts.setdefault("event_rate", 0.0)
    opts.setdefault("initial_objects", (1, 3))
    return make_video(seed, 1, split, **opts)
