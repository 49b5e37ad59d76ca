"""A procedural shape world: the synthetic data seedx-tiny is trained and judged on.

Every picture holds 1-3 flat shapes (``SHAPES``) in saturated colours (``COLOURS``), each
``small`` or ``big`` and placed at one of five ``POSITIONS`` (left, right, top, bottom,
centre) on a plain, light background.  Sizes are fractions of the image's shorter side and
positions are relative to the image, so the same scene can be drawn at any aspect ratio.

Everything is a pure function of an integer seed (``random.Random`` built from a string key,
never global state), so ``caption_image_sample(7, "test")`` is the same sample everywhere.

Three task formats follow SEED-X's data mix:

* ``caption_image_sample``  caption -> 64x64 image (one object, or two with a relation,
  or a count of identical small objects);
* ``comprehension_sample``  image of any aspect (``ASPECTS``) + instruction -> the
  canonical description (``describe_scene``);
* ``story_sample`` / ``text_only_sample``  interleaved text and images.  An image comes
  right after text that ends with one of ``TRIGGER_PHRASES`` (and only there); text-only
  samples use the same words but never a trigger.

Splits.  The (shape, colour, position) triples are split once, with a fixed seed
(``SPLIT_SEED``): about 10% are ``TEST_TRIPLES`` and another 10% ``VALIDATION_TRIPLES``;
the rest are train triples.  A sample of split ``s`` has its *primary* object (the first one,
the one its caption or story starts with) drawn from the triples of ``s``, and its other
objects from the train triples or those of ``s``.  So a held-out combination such as
"a red star on the left" is never seen in training, while each of its pairs (red star, red
on the left, star on the left) is.  ``split_of_triple`` tells which split owns a triple.

Text is lower-case words plus the punctuation ``. , :`` (each its own token, see
``tokenize_words``); ``vocabulary()`` lists every token any generator here can emit.
"""
from __future__ import annotations

import math
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------- attributes

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
PLURALS: dict[str, str] = {s: s + "s" for s in SHAPES}
#: name -> RGB.  Hues are about 0, 49, 127, 180, 234 and 283 degrees: at least 45 apart.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 35, 35),
    "yellow": (232, 190, 10),
    "green": (40, 165, 55),
    "cyan": (0, 170, 170),
    "blue": (40, 60, 230),
    "purple": (150, 45, 195),
}
#: name -> half the side of the object's bounding box, as a fraction of the shorter image side
#: (at 64x64: about 9 px for small, 16 px for big).
SIZES: dict[str, float] = {"small": 0.14, "big": 0.25}
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "centre")
#: the order objects are listed in by ``describe_scene``
DESCRIBE_ORDER: tuple[str, ...] = ("top", "left", "centre", "right", "bottom")
#: plain, light, low-saturation backgrounds
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (246, 246, 244),
    "grey": (228, 228, 228),
    "cream": (243, 237, 222),
    "mint": (228, 240, 232),
    "sky": (226, 234, 245),
}
BASE = 64
#: (width, height) sizes for comprehension images: multiples of the 64 px base tile
ASPECTS: tuple[tuple[int, int], ...] = ((64, 64), (128, 64), (64, 128), (192, 64), (64, 192), (128, 128))
SPLITS: tuple[str, ...] = ("train", "validation", "test")
SPLIT_SEED = 14396

# layout, as fractions of the shorter side: objects hug the border they are named after
MARGIN = 2 / 64          # gap between an object and the image border
JITTER = 3 / 64          # random shift (inwards along the named axis, either way across it)
GAP = 2.8 / 64           # minimum gap between two objects' bounding boxes
CENTRE_BOX = 0.12        # |cx - .5| and |cy - .5| both below this -> "centre"
STAR_INNER = 0.42        # inner / outer radius of the five-pointed star

# --------------------------------------------------------------------------- phrases

#: canonical phrase first; captions and stories may use the others
POSITION_PHRASES: dict[str, tuple[str, ...]] = {
    "left": ("on the left", "on the left side"),
    "right": ("on the right", "on the right side"),
    "top": ("at the top", "near the top"),
    "bottom": ("at the bottom", "near the bottom"),
    "centre": ("in the centre", "in the middle"),
}
#: relation phrase for "A <rel> B" given A's position (B takes the opposite one)
RELATION_OF: dict[str, str] = {"top": "above", "bottom": "below", "left": "to the left of", "right": "to the right of"}
OPPOSITE: dict[str, str] = {"top": "bottom", "bottom": "top", "left": "right", "right": "left"}
COUNT_WORDS: dict[int, str] = {1: "one", 2: "two", 3: "three"}
#: every text segment followed by an image ends with one of these; nothing else contains ':'
TRIGGER_PHRASES: tuple[str, ...] = ("here it is :", "it looks like this :")

SINGLE_TEMPLATES = (
    "a {obj} {pos} .",
    "there is a {obj} {pos} .",
    "{pos} , a {obj} .",
    "a picture of a {obj} {pos} .",
    "one {obj} {pos} .",
    "a {obj} sits {pos} .",
)
RELATION_TEMPLATES = (
    "a {a} {rel} a {b} .",
    "there is a {a} {rel} a {b} .",
    "a picture of a {a} {rel} a {b} .",
)
COUNT_TEMPLATES = (
    "{n} {size} {colour} {shapes} .",
    "there are {n} {size} {colour} {shapes} .",
    "a picture of {n} {size} {colour} {shapes} .",
)
COMPREHENSION_PROMPTS = (
    "describe the image .",
    "describe the picture .",
    "what is in the image .",
    "what do you see .",
    "tell me what is in the picture .",
    "",
)
STORY_OPENINGS = ("a drawing lesson .", "we make pictures today .", "let us make some pictures .")
FIRST_INTROS = ("let us draw", "first , we draw", "we start with", "draw", "please draw")
ADD_INTROS = ("now add", "then add", "next , add", "also add")
NEW_INTROS = ("now a new picture with", "next , a new picture with", "start again with")
COMMENTS = ("nice .", "good .", "that looks good .", "the {colour} {shape} is {pos} .")
ENDINGS = ("that is all .", "the end .", "we are done .")
SHAPE_FACTS: dict[str, str] = {
    "circle": "is round",
    "square": "has four corners",
    "triangle": "has three corners",
    "star": "has five points",
}
TEXT_ONLY_TEMPLATES = (
    "the {obj} is {pos} .",
    "a {shape} {fact} .",
    "{colour} is a nice colour .",
    "we like the {colour} {shape} .",
    "let us draw a {obj} {pos} later .",
    "it is {size} and {colour} .",
    "there is no picture here .",
    "the {colour} {shape} is not {colour2} .",
)
EMPTY_DESCRIPTION = "an empty picture ."

RGB = tuple[int, int, int]


# --------------------------------------------------------------------------- validation

def _check_choice(kind: str, value, options) -> None:
    if value not in options:
        raise ValueError(f"unknown {kind} {value!r}; expected one of {sorted(options)}")


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _check_split(split) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {list(SPLITS)}")


def _check_rgb(name: str, rgb) -> RGB:
    try:
        vals = tuple(int(v) for v in rgb)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three integers 0-255, got {rgb!r}") from None
    if len(vals) != 3 or any(v < 0 or v > 255 for v in vals):
        raise ValueError(f"{name} must be three integers 0-255, got {rgb!r}")
    return vals  # type: ignore[return-value]


def _check_dims(width, height) -> None:
    for name, v in (("width", width), ("height", height)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")


# --------------------------------------------------------------------------- scene

def position_of(cx: float, cy: float) -> str:
    """Position name of a normalised centre: ``centre`` near the middle, else the dominant axis."""
    dx, dy = cx - 0.5, cy - 0.5
    if max(abs(dx), abs(dy)) < CENTRE_BOX:
        return "centre"
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "top" if dy < 0 else "bottom"


@dataclass(frozen=True)
class Obj:
    """One shape: attribute names plus its centre in normalised image coordinates (0..1)."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float

    def __post_init__(self):
        _check_choice("shape", self.shape, SHAPES)
        _check_choice("colour", self.colour, COLOURS)
        _check_choice("size", self.size, SIZES)
        for name in ("cx", "cy"):
            v = getattr(self, name)
            if not isinstance(v, (int, float, np.floating)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be a number in [0, 1], got {v!r}")

    @property
    def position(self) -> str:
        return position_of(self.cx, self.cy)

    @property
    def triple(self) -> tuple[str, str, str]:
        return (self.shape, self.colour, self.position)

    def words(self) -> str:
        """``"big red circle"``."""
        return f"{self.size} {self.colour} {self.shape}"

    def bbox(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Pixel box (x0, y0, x1, y1) the shape fills when drawn at ``width`` x ``height``."""
        r = SIZES[self.size] * min(width, height)
        x, y = self.cx * width, self.cy * height
        return (x - r, y - r, x + r, y + r)


@dataclass
class Scene:
    """An image description: size in pixels, background RGB and the objects (primary first)."""

    width: int = BASE
    height: int = BASE
    background: RGB = BACKGROUNDS["white"]
    objects: list[Obj] = field(default_factory=list)

    def __post_init__(self):
        _check_dims(self.width, self.height)
        self.background = _check_rgb("background", self.background)
        self.objects = list(self.objects)
        for o in self.objects:
            if not isinstance(o, Obj):
                raise ValueError(f"scene objects must be Obj instances, got {type(o).__name__}")

    @property
    def primary(self) -> Obj | None:
        return self.objects[0] if self.objects else None


def shape_outline(shape: str, n_circle: int = 72) -> list[tuple[float, float]]:
    """Polygon of ``shape`` filling the box [-1, 1]^2 (y down)."""
    _check_choice("shape", shape, SHAPES)
    if shape == "circle":
        return [(math.cos(2 * math.pi * k / n_circle), math.sin(2 * math.pi * k / n_circle)) for k in range(n_circle)]
    if shape == "square":
        return [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
    if shape == "triangle":
        return [(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)]
    pts = []
    for k in range(10):
        a = -math.pi / 2 + k * math.pi / 5
        rad = 1.0 if k % 2 == 0 else STAR_INNER
        pts.append((rad * math.cos(a), rad * math.sin(a)))
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    mx, my = (max(xs) + min(xs)) / 2, (max(ys) + min(ys)) / 2
    sx, sy = (max(xs) - min(xs)) / 2, (max(ys) - min(ys)) / 2
    return [((x - mx) / sx, (y - my) / sy) for x, y in pts]


def render(scene: Scene, size: int | tuple[int, int] | None = None, supersample: int = 4) -> Image.Image:
    """Draw ``scene`` as an RGB image (anti-aliased by supersampling).

    ``size``: None (the scene's own size), ``(width, height)``, or an int that becomes the
    shorter side with the aspect ratio kept.
    """
    if not isinstance(scene, Scene):
        raise ValueError(f"render expects a Scene, got {type(scene).__name__}")
    if size is None:
        w, h = scene.width, scene.height
    elif isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        _check_dims(size, size)
        k = size / min(scene.width, scene.height)
        w, h = max(1, round(scene.width * k)), max(1, round(scene.height * k))
    else:
        try:
            w, h = size
        except (TypeError, ValueError):
            raise ValueError(f"size must be None, an int or (width, height), got {size!r}") from None
        _check_dims(w, h)
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    k = supersample
    img = Image.new("RGB", (w * k, h * k), scene.background)
    draw = ImageDraw.Draw(img)
    short = min(w, h) * k
    for o in scene.objects:
        x, y, r = o.cx * w * k, o.cy * h * k, SIZES[o.size] * short
        draw.polygon([(x + u * r, y + v * r) for u, v in shape_outline(o.shape)], fill=COLOURS[o.colour])
    return img.resize((w, h), Image.Resampling.BOX) if k > 1 else img


# --------------------------------------------------------------------------- splits

def _all_triples() -> list[tuple[str, str, str]]:
    return [(s, c, p) for s in SHAPES for c in COLOURS for p in POSITIONS]


def _held_out_sets() -> tuple[frozenset, frozenset]:
    """Pick the test and validation triples with a fixed seed.

    Within one set two triples share at most one attribute, and across both sets every
    attribute pair is held out at most twice, so every pair is still seen in training.
    """
    triples = _all_triples()
    random.Random(SPLIT_SEED).shuffle(triples)
    n = max(1, round(0.10 * len(triples)))
    test: list = []
    val: list = []
    pair_uses: Counter = Counter()

    def pairs(t):
        return [(0, t[0], t[1]), (1, t[0], t[2]), (2, t[1], t[2])]

    for t in triples:
        if any(pair_uses[p] >= 2 for p in pairs(t)):
            continue
        for chosen in (test, val):
            if len(chosen) < n and all(sum(a == b for a, b in zip(t, u)) <= 1 for u in chosen):
                chosen.append(t)
                pair_uses.update(pairs(t))
                break
        if len(test) == n and len(val) == n:
            break
    if len(test) < n or len(val) < n:  # pragma: no cover - depends only on the constants above
        raise RuntimeError("could not choose held-out triples; change SPLIT_SEED")
    return frozenset(test), frozenset(val)


TEST_TRIPLES, VALIDATION_TRIPLES = _held_out_sets()
TRAIN_TRIPLES = frozenset(t for t in _all_triples() if t not in TEST_TRIPLES and t not in VALIDATION_TRIPLES)
_PRIMARY = {
    "train": sorted(TRAIN_TRIPLES),
    "validation": sorted(VALIDATION_TRIPLES),
    "test": sorted(TEST_TRIPLES),
}
_SECONDARY = {
    "train": TRAIN_TRIPLES,
    "validation": TRAIN_TRIPLES | VALIDATION_TRIPLES,
    "test": TRAIN_TRIPLES | TEST_TRIPLES,
}


def split_of_triple(shape: str, colour: str, position: str) -> str:
    """Which split owns (shape, colour, position): 'train', 'validation' or 'test'."""
    _check_choice("shape", shape, SHAPES)
    _check_choice("colour", colour, COLOURS)
    _check_choice("position", position, POSITIONS)
    t = (shape, colour, position)
    if t in TEST_TRIPLES:
        return "test"
    if t in VALIDATION_TRIPLES:
        return "validation"
    return "train"


# --------------------------------------------------------------------------- layout

Spec = tuple[str, str, str, str]  # shape, colour, size, position


def _place(rng: random.Random, spec: Spec, w: int, h: int, jitter: bool) -> Obj:
    shape, colour, size, pos = spec
    s = min(w, h)
    r, m, j = SIZES[size] * s, MARGIN * s, (JITTER * s if jitter else 0.0)
    u, v = rng.random(), rng.random()
    x, y = w / 2 + (2 * u - 1) * j, h / 2 + (2 * v - 1) * j
    if pos == "left":
        x = m + r + u * j
    elif pos == "right":
        x = w - m - r - u * j
    elif pos == "top":
        y = m + r + v * j
    elif pos == "bottom":
        y = h - m - r - v * j
    obj = Obj(shape, colour, size, x / w, y / h)
    if obj.position != pos:  # pragma: no cover - guarded by the layout constants
        raise RuntimeError(f"placement of {spec} landed at {obj.position}")
    return obj


def _fits(obj: Obj, others: list[Obj], w: int, h: int) -> bool:
    x0, y0, x1, y1 = obj.bbox(w, h)
    if x0 < -1e-6 or y0 < -1e-6 or x1 > w + 1e-6 or y1 > h + 1e-6:
        return False
    gap = GAP * min(w, h)
    for o in others:
        a0, b0, a1, b1 = o.bbox(w, h)
        if not (x1 + gap <= a0 or a1 + gap <= x0 or y1 + gap <= b0 or b1 + gap <= y0):
            return False
    return True


def _place_all(rng: random.Random, specs: list[Spec], w: int, h: int, fixed: list[Obj] = (), tries: int = 30) -> list[Obj] | None:
    """Place ``specs`` next to ``fixed`` objects without overlap; the last tries use no jitter."""
    for attempt in range(tries + 1):
        placed: list[Obj] = list(fixed)
        for spec in specs:
            o = _place(rng, spec, w, h, jitter=attempt < tries)
            if not _fits(o, placed, w, h):
                break
            placed.append(o)
        else:
            return placed[len(fixed):]
    return None


def _secondary_pair(rng: random.Random, split: str, position: str, avoid=()) -> tuple[str, str] | None:
    """A (shape, colour) whose triple at ``position`` a sample of ``split`` may show."""
    options = [(s, c) for s in SHAPES for c in COLOURS if (s, c, position) in _SECONDARY[split] and (s, c) not in avoid]
    return rng.choice(options) if options else None


def _random_size(rng: random.Random) -> str:
    return rng.choice(tuple(SIZES))


def _sample_objects(rng: random.Random, split: str, w: int, h: int, n: int) -> list[Obj]:
    shape, colour, pos = rng.choice(_PRIMARY[split])
    others = rng.sample([p for p in POSITIONS if p != pos], n - 1)
    pairs = [(shape, colour)] + [_secondary_pair(rng, split, p) for p in others]
    positions = [pos] + others
    for attempt in range(6):
        sizes = [_random_size(rng) if attempt < 5 else "small" for _ in range(n)]
        specs = [(s, c, z, p) for (s, c), z, p in zip(pairs, sizes, positions)]
        objs = _place_all(rng, specs, w, h)
        if objs is not None:
            return objs
    raise RuntimeError("could not lay out small objects at distinct positions")  # pragma: no cover


def _pick_background(rng: random.Random) -> RGB:
    return BACKGROUNDS[rng.choice(tuple(BACKGROUNDS))]


def sample_scene(seed: int, split: str = "train", width: int = BASE, height: int = BASE,
                 n_objects: int | None = None) -> Scene:
    """A random scene of 1-3 objects (or ``n_objects``, 1-5) at distinct positions.

    The primary object's triple belongs to ``split``; the others belong to train or ``split``.
    """
    _check_seed(seed)
    _check_split(split)
    _check_dims(width, height)
    rng = random.Random(f"scene:{split}:{int(seed)}")
    if n_objects is None:
        n = rng.choices((1, 2, 3), weights=(0.5, 0.3, 0.2))[0]
    else:
        if isinstance(n_objects, bool) or not isinstance(n_objects, (int, np.integer)) or not 1 <= n_objects <= len(POSITIONS):
            raise ValueError(f"n_objects must be an integer from 1 to {len(POSITIONS)}, got {n_objects!r}")
        n = int(n_objects)
    background = _pick_background(rng)
    return Scene(width, height, background, _sample_objects(rng, split, width, height, n))


def aspect_for_seed(seed: int) -> tuple[int, int]:
    """One of ``ASPECTS`` picked reproducibly from ``seed``."""
    _check_seed(seed)
    return ASPECTS[random.Random(f"aspect:{int(seed)}").randrange(len(ASPECTS))]


# --------------------------------------------------------------------------- text

_TOKEN_RE = re.compile(r"[.,:]|[^\s.,:]+")


def tokenize_words(text: str) -> list[str]:
    """Lower-case, split on whitespace, and make each of ``. , :`` its own token."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    return _TOKEN_RE.findall(text.lower())


def _join(text: str) -> str:
    """Normalise spacing: single spaces, none at the ends."""
    return " ".join(text.split())


def describe_object(obj: Obj) -> str:
    """Canonical phrase for one object: ``"a big red circle on the left"``."""
    return f"a {obj.words()} {POSITION_PHRASES[obj.position][0]}"


def describe_scene(scene: Scene) -> str:
    """The canonical description (image -> text target): objects in ``DESCRIBE_ORDER``.

    ``"a small blue star at the top , a big red circle on the left ."``
    """
    if not isinstance(scene, Scene):
        raise ValueError(f"describe_scene expects a Scene, got {type(scene).__name__}")
    if not scene.objects:
        return EMPTY_DESCRIPTION
    order = sorted(range(len(scene.objects)), key=lambda i: (DESCRIBE_ORDER.index(scene.objects[i].position), i))
    return " , ".join(describe_object(scene.objects[i]) for i in order) + " ."


_SHAPE_WORDS = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
_POSITION_WORDS = {"left": "left", "right": "right", "top": "top", "bottom": "bottom",
                   "centre": "centre", "middle": "centre", "center": "centre"}
_COUNT_OF = {"a": 1, "an": 1, "one": 1, "two": 2, "three": 3}


def parse_description(text: str) -> list[dict]:
    """Objects named in a description or caption, in order of mention.

    Each is ``dict(shape, colour, size, position)``; attributes not stated are None.
    Understands the canonical form, the caption templates (position before or after the
    object, relations such as "above" and "to the left of") and counts ("two red circles").
    """
    toks = tokenize_words(text)
    objects: list[dict] = []
    group: list[dict] = []           # the objects created by the last shape word
    pending: dict = {}               # colour / size / count / position read before a shape
    relation_for_next: str | None = None
    for i, t in enumerate(toks):
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if t in COLOURS:
            pending["colour"] = t
        elif t in SIZES:
            pending["size"] = t
        elif t in _COUNT_OF:
            pending["count"] = _COUNT_OF[t]
        elif t in _SHAPE_WORDS:
            n = pending.pop("count", 1)
            pos = pending.pop("position", None) or relation_for_next
            relation_for_next = None
            group = [dict(shape=_SHAPE_WORDS[t], colour=pending.get("colour"), size=pending.get("size"), position=pos)
                     for _ in range(n)]
            objects.extend(group)
            pending = {}
        elif t in ("above", "below") or (t in ("left", "right") and nxt == "of"):
            own = {"above": "top", "below": "bottom"}.get(t, t)
            for o in group:
                o["position"] = o["position"] or own
            relation_for_next = OPPOSITE[own]
        elif t in _POSITION_WORDS:
            pos = _POSITION_WORDS[t]
            if group and all(o["position"] is None for o in group):
                for o in group:
                    o["position"] = pos
            else:
                pending["position"] = pos
        elif t == ".":
            group = []
            pending = {}
    return objects


# --------------------------------------------------------------------------- tasks

@dataclass
class CaptionSample:
    """Text-to-image pair: ``kind`` is 'single', 'relation' or 'count'."""

    seed: int
    split: str
    kind: str
    caption: str
    scene: Scene
    image: Image.Image


@dataclass
class ComprehensionSample:
    """Image (any aspect) + instruction -> canonical description."""

    seed: int
    split: str
    scene: Scene
    image: Image.Image
    question: str
    answer: str


@dataclass
class StorySample:
    """Interleaved segments: ``str`` text or ``Scene`` images (render with ``images()``)."""

    seed: int
    split: str
    kind: str  # 'story' or 'text_only'
    segments: list[Union[str, Scene]]

    @property
    def scenes(self) -> list[Scene]:
        return [s for s in self.segments if isinstance(s, Scene)]

    @property
    def texts(self) -> list[str]:
        return [s for s in self.segments if isinstance(s, str)]

    @property
    def n_images(self) -> int:
        return len(self.scenes)

    def images(self) -> list[Image.Image]:
        return [render(s) for s in self.scenes]


def _pos_phrase(rng: random.Random, position: str) -> str:
    return rng.choice(POSITION_PHRASES[position])


def _single_caption(rng: random.Random, obj: Obj) -> str:
    t = rng.choice(SINGLE_TEMPLATES)
    return _join(t.format(obj=obj.words(), pos=_pos_phrase(rng, obj.position)))


def _relation_layout(rng, split, shape, colour, pos, w, h):
    if pos == "centre":
        return None
    other = OPPOSITE[pos]
    pair = _secondary_pair(rng, split, other, avoid={(shape, colour)})
    if pair is None:
        return None
    sizes = [_random_size(rng), _random_size(rng)]
    if sizes == ["big", "big"]:
        sizes[rng.randrange(2)] = "small"
    specs = [(shape, colour, sizes[0], pos), (pair[0], pair[1], sizes[1], other)]
    objs = _place_all(rng, specs, w, h) or _place_all(rng, [(*s[:2], "small", s[3]) for s in specs], w, h)
    a, b = objs
    t = rng.choice(RELATION_TEMPLATES)
    return objs, _join(t.format(a=a.words(), rel=RELATION_OF[pos], b=b.words()))


def _count_layout(rng, split, shape, colour, pos, w, h):
    n = 3 if pos == "centre" else rng.choice((2, 3))
    if pos in ("left", "right"):
        axis = ("left", "centre", "right")
    elif pos in ("top", "bottom"):
        axis = ("top", "centre", "bottom")
    else:
        axis = rng.choice((("left", "centre", "right"), ("top", "centre", "bottom")))
    others = [p for p in axis if p != pos and (n == 3 or p != "centre")]
    if any((shape, colour, p) not in _SECONDARY[split] for p in others):
        return None
    specs = [(shape, colour, "small", p) for p in [pos] + others]
    objs = _place_all(rng, specs, w, h)
    t = rng.choice(COUNT_TEMPLATES)
    return objs, _join(t.format(n=COUNT_WORDS[n], size="small", colour=colour, shapes=PLURALS[shape]))


def caption_image_sample(seed: int, split: str = "train") -> CaptionSample:
    """A caption and the 64x64 image it describes (mostly one object)."""
    _check_seed(seed)
    _check_split(split)
    rng = random.Random(f"caption:{split}:{int(seed)}")
    w = h = BASE
    background = _pick_background(rng)
    kind = rng.choices(("single", "relation", "count"), weights=(0.6, 0.25, 0.15))[0]
    shape, colour, pos = rng.choice(_PRIMARY[split])
    result = None
    if kind == "relation":
        result = _relation_layout(rng, split, shape, colour, pos, w, h)
    elif kind == "count":
        result = _count_layout(rng, split, shape, colour, pos, w, h)
    if result is None:
        kind = "single"
        objs = _place_all(rng, [(shape, colour, _random_size(rng), pos)], w, h)
        result = objs, _single_caption(rng, objs[0])
    objs, caption = result
    scene = Scene(w, h, background, objs)
    return CaptionSample(int(seed), split, kind, caption, scene, render(scene))


def comprehension_sample(seed: int, split: str = "train") -> ComprehensionSample:
    """An image of one of ``ASPECTS`` with an instruction; the answer is ``describe_scene``."""
    _check_seed(seed)
    _check_split(split)
    rng = random.Random(f"comprehension:{split}:{int(seed)}")
    w, h = aspect_for_seed(seed)
    scene = sample_scene(seed, split, w, h)
    question = rng.choice(COMPREHENSION_PROMPTS)
    return ComprehensionSample(int(seed), split, scene, render(scene), question, describe_scene(scene))


def _story_object(rng, split, current: list[Obj], first: bool, w: int, h: int):
    """Next object for a story: ('first'|'add'|'new', placed Obj)."""
    if first:
        shape, colour, pos = rng.choice(_PRIMARY[split])
        obj = _place_all(rng, [(shape, colour, _random_size(rng), pos)], w, h)[0]
        return "first", obj
    if rng.random() < 0.7:
        free = [p for p in POSITIONS if p not in {o.position for o in current}]
        rng.shuffle(free)
        for pos in free:
            pair = _secondary_pair(rng, split, pos)
            for size in (_random_size(rng), "small"):
                placed = _place_all(rng, [(pair[0], pair[1], size, pos)], w, h, fixed=current, tries=10)
                if placed:
                    return "add", placed[0]
    pos = rng.choice(POSITIONS)
    pair = _secondary_pair(rng, split, pos)
    return "new", _place_all(rng, [(pair[0], pair[1], _random_size(rng), pos)], w, h)[0]


def story_sample(seed: int, split: str = "train") -> StorySample:
    """Drawing steps, each ending in a trigger phrase followed by the picture (1-3 images).

    Pictures are cumulative ("now add ...") unless the text says "a new picture".
    """
    _check_seed(seed)
    _check_split(split)
    rng = random.Random(f"story:{split}:{int(seed)}")
    w = h = BASE
    background = _pick_background(rng)
    n_images = rng.choices((1, 2, 3), weights=(0.3, 0.4, 0.3))[0]
    segments: list[Union[str, Scene]] = []
    text: list[str] = [rng.choice(STORY_OPENINGS)] if rng.random() < 0.3 else []
    current: list[Obj] = []
    for step in range(n_images):
        mode, obj = _story_object(rng, split, current, step == 0, w, h)
        intro = {"first": FIRST_INTROS, "add": ADD_INTROS, "new": NEW_INTROS}[mode]
        current = current + [obj] if mode == "add" else [obj]
        text.append(f"{rng.choice(intro)} a {obj.words()} {_pos_phrase(rng, obj.position)} . {rng.choice(TRIGGER_PHRASES)}")
        segments.append(_join(" ".join(text)))
        segments.append(Scene(w, h, background, list(current)))
        text = []
        if rng.random() < 0.35:
            text.append(rng.choice(COMMENTS).format(colour=obj.colour, shape=obj.shape, pos=_pos_phrase(rng, obj.position)))
    if rng.random() < 0.5:
        text.append(rng.choice(ENDINGS))
    if text:
        segments.append(_join(" ".join(text)))
    return StorySample(int(seed), split, "story", segments)


def text_only_sample(seed: int, split: str = "train") -> StorySample:
    """1-4 sentences about shapes with no picture and no trigger phrase."""
    _check_seed(seed)
    _check_split(split)
    rng = random.Random(f"text:{split}:{int(seed)}")
    shape, colour, pos = rng.choice(_PRIMARY[split])
    size = _random_size(rng)
    obj_words = f"{size} {colour} {shape}"
    sentences = []
    for _ in range(rng.choice((1, 2, 3, 4))):
        t = rng.choice(TEXT_ONLY_TEMPLATES)
        sentences.append(t.format(obj=obj_words, pos=_pos_phrase(rng, pos), shape=shape, fact=SHAPE_FACTS.get(shape, "is a shape"),
                                  colour=colour, size=size, colour2=rng.choice([c for c in COLOURS if c != colour])))
    return StorySample(int(seed), split, "text_only", [_join(" ".join(sentences))])


def ends_with_trigger(text: str) -> bool:
    """True when ``text`` ends with one of ``TRIGGER_PHRASES`` (an image should follow)."""
    toks = tokenize_words(text)
    return any(toks[-len(tokenize_words(p)):] == tokenize_words(p) for p in TRIGGER_PHRASES)


def contains_trigger(text: str) -> bool:
    """True when any trigger phrase occurs anywhere in ``text``."""
    joined = " " + " ".join(tokenize_words(text)) + " "
    return any(" " + " ".join(tokenize_words(p)) + " " in joined for p in TRIGGER_PHRASES)


# --------------------------------------------------------------------------- vocabulary

def vocabulary() -> list[str]:
    """Every token (word or ``. , :``) any generator in this module can emit, sorted."""
    fragments: list[str] = [*SHAPES, *PLURALS.values(), *COLOURS, *SIZES, *COUNT_WORDS.values(),
                            *RELATION_OF.values(), *TRIGGER_PHRASES, *SHAPE_FACTS.values(), EMPTY_DESCRIPTION, "a"]
    for phrases in POSITION_PHRASES.values():
        fragments.extend(phrases)
    for group in (SINGLE_TEMPLATES, RELATION_TEMPLATES, COUNT_TEMPLATES, COMPREHENSION_PROMPTS, STORY_OPENINGS,
                  FIRST_INTROS, ADD_INTROS, NEW_INTROS, COMMENTS, ENDINGS, TEXT_ONLY_TEMPLATES):
        fragments.extend(re.sub(r"\{[a-z0-9_]+\}", " ", t) for t in group)
    words = set()
    for f in fragments:
        words.update(tokenize_words(f))
    return sorted(words)
