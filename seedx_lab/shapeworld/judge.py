"""A pixel-only judge for shape-world images: what shapes, colours and positions are drawn?

It never looks at a model, only at pixels, so it can grade generated pictures:

1. background = the most common (coarsely quantised) colour along the border;
2. foreground = pixels far (RGB distance) from the background after a 3x3 median (which
   removes speckle), split into 4-connected components with a small numpy label propagation
   (no scipy); components below ``MIN_AREA`` are noise;
3. each component is re-thresholded at half its own contrast and split again: this traces
   soft or blurry edges and separates objects that blur has joined;
4. colour = majority vote of the saturated pixels' hues, each snapped to the nearest hue in
   ``world.COLOURS``; shape = nearest template (``world.shape_outline``, sharp or slightly
   blurred) after stretching the bounding box to a square; position = ``world.position_of``
   of the bounding-box centre (the convention world.py places objects by); size = box side
   against the shorter image side.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Mapping, Sequence, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from . import world

FOREGROUND_DISTANCE = 60.0    # RGB distance from the background that starts a component
MIN_AREA = 0.008              # components smaller than this * shorter_side**2 are ignored
MIN_SATURATION = 0.25         # pixels greyer than this do not vote for a colour
TEMPLATE = 24                 # side of the shape templates compared with each component
TEMPLATE_BLURS = (0.0, 0.1, 0.2)  # blur of the templates, as a fraction of the shape's half-size
SIZE_SPLIT = world.SIZES["small"] + world.SIZES["big"]  # box side / short side: midway between the two sizes


@dataclass(frozen=True)
class Detection:
    """One object found in an image; ``cx``, ``cy`` normalised, ``area`` in pixels."""

    shape: str
    colour: str
    position: str
    cx: float
    cy: float
    area: int
    size: str = "small"


def _as_rgb(image) -> np.ndarray:
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    elif isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise ValueError(f"image array must be HxW, HxWx3 or HxWx4, got shape {arr.shape}")
        arr = arr[..., :3]
        if arr.dtype.kind == "f":
            if arr.size and arr.max() <= 1.0 + 1e-6:
                arr = arr * 255.0
            arr = np.clip(np.round(arr), 0, 255)
        arr = arr.astype(np.uint8)
    else:
        raise ValueError(f"image must be a PIL image or numpy array, got {type(image).__name__}")
    if arr.shape[0] < 4 or arr.shape[1] < 4:
        raise ValueError(f"image is too small to judge: {arr.shape[1]}x{arr.shape[0]}")
    return arr


def background_colour(arr: np.ndarray) -> np.ndarray:
    """Most common border colour (quantised to 16 levels), refined as the median of that bin."""
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]]).astype(np.int32)
    keys = (border // 16) @ np.array([256, 16, 1])
    values, counts = np.unique(keys, return_counts=True)
    mode = values[np.argmax(counts)]
    return np.median(border[keys == mode], axis=0)


def connected_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """4-connected labels of a boolean mask: (labels with -1 for background, count)."""
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    h, w = mask.shape
    none = h * w
    flat_ids = np.arange(h * w).reshape(h, w)
    lab = np.where(mask, flat_ids, none)
    while True:
        new = lab.copy()
        np.minimum(new[1:], lab[:-1], out=new[1:])
        np.minimum(new[:-1], lab[1:], out=new[:-1])
        np.minimum(new[:, 1:], lab[:, :-1], out=new[:, 1:])
        np.minimum(new[:, :-1], lab[:, 1:], out=new[:, :-1])
        new = np.where(mask, new, none)
        # pointer jumping: a label is a pixel index, follow it to that pixel's own label
        flat = np.append(new.ravel(), none)
        new = np.where(mask, flat[new], none)
        if np.array_equal(new, lab):
            break
        lab = new
    roots = np.unique(lab[mask])
    out = np.full((h, w), -1, dtype=np.int64)
    out[mask] = np.searchsorted(roots, lab[mask])
    return out, len(roots)


def _blurred_template(shape: str, blur: float, n: int = TEMPLATE) -> np.ndarray:
    """``shape`` blurred by ``blur`` x its half-size, cut at half height, box-normalised to n x n."""
    half = 4 * n                                   # drawing scale: half-size in pixels
    canvas = Image.new("L", (6 * half, 6 * half), 0)
    c = 3 * half
    pts = [(c + u * half, c + v * half) for u, v in world.shape_outline(shape)]
    ImageDraw.Draw(canvas).polygon(pts, fill=255)
    if blur > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(blur * half))
    mask = np.asarray(canvas) >= 128
    return _box_normalise(mask, n)


def _box_normalise(mask: np.ndarray, n: int = TEMPLATE) -> np.ndarray:
    """Crop a boolean mask to its bounding box and resample it to n x n floats."""
    ys, xs = np.nonzero(mask)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1].astype(np.float32)
    return np.asarray(Image.fromarray(crop, mode="F").resize((n, n), Image.Resampling.BILINEAR))


@lru_cache(maxsize=None)
def _templates() -> tuple[tuple[str, ...], np.ndarray]:
    """(names, templates[shape, blur, n, n]): each shape sharp and at a few blur levels."""
    return world.SHAPES, np.stack([np.stack([_blurred_template(s, b) for b in TEMPLATE_BLURS]) for s in world.SHAPES])


@lru_cache(maxsize=None)
def _colour_hues() -> tuple[tuple[str, ...], np.ndarray]:
    names = tuple(world.COLOURS)
    return names, _hsv(np.array([world.COLOURS[n] for n in names], dtype=np.uint8))[0]


def _hsv(pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hue (degrees) and saturation of Nx3 uint8 pixels (matplotlib's vectorised ``rgb_to_hsv``)."""
    from matplotlib.colors import rgb_to_hsv

    hsv = rgb_to_hsv(pixels.astype(np.float64) / 255.0)                   # [N, 3] in [0, 1]
    return hsv[:, 0] * 360.0, hsv[:, 1]


def classify_colour(pixels: np.ndarray) -> str:
    """Colour name for Nx3 pixels: majority vote of saturated pixels' nearest palette hue."""
    names, hues = _colour_hues()
    hue, sat = _hsv(pixels)
    keep = sat >= MIN_SATURATION
    if keep.sum() == 0:  # nothing colourful: fall back on the nearest palette RGB of the mean
        mean = pixels.astype(np.float64).mean(axis=0)
        return min(names, key=lambda n: float(np.sum((np.array(world.COLOURS[n]) - mean) ** 2)))
    diff = np.abs(hue[keep, None] - hues[None, :])
    diff = np.minimum(diff, 360 - diff)
    votes = np.bincount(diff.argmin(axis=1), weights=sat[keep], minlength=len(names))
    return names[int(votes.argmax())]


def classify_shape(mask: np.ndarray) -> str:
    """Shape name of a boolean component mask: nearest template after box normalisation."""
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("cannot classify an empty mask")
    names, templates = _templates()
    errors = np.abs(templates - _box_normalise(mask)[None, None]).mean(axis=(2, 3)).min(axis=1)
    return names[int(errors.argmin())]


def _describe(arr: np.ndarray, core: np.ndarray) -> Detection:
    h, w = arr.shape[:2]
    ys, xs = np.nonzero(core)
    # the box centre, as in world.py (a triangle's centroid sits lower than its box centre)
    cx, cy = (xs.min() + xs.max() + 1) / 2 / w, (ys.min() + ys.max() + 1) / 2 / h
    side = max(xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) / min(h, w)
    return Detection(
        shape=classify_shape(core),
        colour=classify_colour(arr[core]),
        position=world.position_of(cx, cy),
        cx=float(cx), cy=float(cy), area=int(core.sum()),
        size="big" if side >= SIZE_SPLIT else "small",
    )


def judge_image(image: Union[Image.Image, np.ndarray], min_area: float = MIN_AREA) -> list[Detection]:
    """Objects in ``image``, largest first.

    ``image``: a PIL image, or an HxW / HxWx3 / HxWx4 array (uint8, or floats in 0..1 or 0..255).
    """
    arr = _as_rgb(image)
    h, w = arr.shape[:2]
    bg = background_colour(arr)
    dist = np.sqrt(((arr.astype(np.float64) - bg) ** 2).sum(axis=2))
    # a 3x3 median removes speckle noise before the foreground threshold
    smooth = np.asarray(Image.fromarray(arr).filter(ImageFilter.MedianFilter(3)), dtype=np.float64)
    smooth_dist = np.sqrt(((smooth - bg) ** 2).sum(axis=2))
    labels, n = connected_components(smooth_dist > FOREGROUND_DISTANCE)
    min_pixels = max(4.0, min_area * min(h, w) ** 2)
    found = []
    for k in range(n):
        comp = labels == k
        if comp.sum() < min_pixels:
            continue
        # the core (half the component's contrast) traces soft edges and splits blurred-together objects
        core_labels, n_core = connected_components(comp & (dist >= 0.5 * np.percentile(dist[comp], 90)))
        for j in range(n_core):
            core = core_labels == j
            if core.sum() >= min_pixels / 2:
                found.append(_describe(arr, core))
    found.sort(key=lambda d: -d.area)
    return found


Target = Union[world.Scene, world.Obj, Mapping, Sequence]


def _target_objects(target: Target) -> list[dict]:
    if isinstance(target, world.Scene):
        return [dict(shape=o.shape, colour=o.colour, position=o.position, size=o.size) for o in target.objects]
    if isinstance(target, world.Obj):
        return [dict(shape=target.shape, colour=target.colour, position=target.position, size=target.size)]
    if isinstance(target, str):
        return world.parse_description(target)
    if isinstance(target, Mapping):
        return [dict(target)]
    if isinstance(target, Sequence):
        out = []
        for t in target:
            out.extend(_target_objects(t))
        return out
    raise ValueError(f"cannot score against a {type(target).__name__}; pass a Scene, Obj, dict, list or text")


_KEYS = ("shape", "colour", "position")


def _match(det: Detection, want: dict) -> dict:
    return {k: want.get(k) is None or getattr(det, k) == want[k] for k in _KEYS}


def score_image(image, target: Target) -> dict:
    """Does ``image`` show the target's primary object (shape, colour, position)?

    ``target``: a Scene (its first object), an Obj, a dict, a list of dicts or a caption /
    description (parsed with ``world.parse_description``).  Attributes the target leaves as
    None count as matched.  The primary object is compared with the detection that agrees with
    it on the most attributes (larger wins ties); with no detection every check is False.
    Returns ``dict(shape, colour, position, all, n_objects)``.
    """
    wanted = _target_objects(target)
    if not wanted:
        raise ValueError("the target names no object to score")
    want = wanted[0]
    dets = judge_image(image)
    if not dets:
        return dict(shape=False, colour=False, position=False, all=False, n_objects=0)
    best = max(dets, key=lambda d: (sum(_match(d, want).values()), d.area))
    m = _match(best, want)
    return dict(**m, all=all(m.values()), n_objects=len(dets))


def score_all(image, target: Target) -> dict:
    """Every target object must be detected (each detection used once), with no extras.

    Returns ``dict(found=[bool per target object], count=bool, all=bool)``.
    """
    wanted = _target_objects(target)
    detections = judge_image(image)
    dets = list(detections)
    found = []
    for want in wanted:
        hit = next((d for d in dets if all(_match(d, want).values())), None)
        found.append(hit is not None)
        if hit is not None:
            dets.remove(hit)
    count = len(detections) == len(wanted)
    return dict(found=found, count=count, all=all(found) and count)
