"""Any-resolution tiling as in SEED-X.

A grid ``CxR`` (C columns, R rows) stands for the resolution ``(C*base, R*base)`` written as
(width, height). Two rules each pick a resolution for an image of size ``(w0, h0)``:

* LLaVA-NeXT rule: scale the image to fit inside the candidate (keeping its ratio); the
  *effective resolution* is ``min(scaled area, original area)``; take the largest, and on a tie the
  one that wastes the fewest pixels (candidate area - effective resolution).
* aspect rule: take the candidate whose height/width ratio is closest to the image's
  (``max(ar, ar0) / min(ar, ar0)``), and on a tie the one whose area is closest
  (``max(A, A0) / min(A, A0)``).

Ties inside a rule keep the earlier candidate. SEED-X keeps the choice with the **smaller area**
(the LLaVA-NeXT one when both areas are equal), *stretches* the image to it (no padding), cuts it
into ``base x base`` tiles in row-major order and appends a plain resize of the whole image to
``base x base`` as the last, global view. A tile's position is its normalised centre
``((col + .5) / C, (row + .5) / R)``; the global view sits at ``(0.5, 0.5)``.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PINPOINTS: tuple[str, ...] = ("1x1", "1x2", "1x3", "2x1", "3x1", "1x4", "4x1", "2x2")
BASE_RESOLUTION = 448          # published tile size; seedx-tiny uses 64

from .vit import CLIP_MEAN, CLIP_STD, normalize as clip_normalize  # noqa: F401  (re-exported)


def parse_grid(grid: str) -> tuple[int, int]:
    """``"3x1"`` -> ``(3, 1)`` as (columns, rows)."""
    try:
        c, r = (int(v) for v in grid.lower().split("x"))
    except (ValueError, AttributeError):
        raise ValueError(f"a grid is written 'CxR' with two positive integers, got {grid!r}") from None
    if c < 1 or r < 1:
        raise ValueError(f"a grid needs at least one column and one row, got {grid!r}")
    return c, r


def candidate_resolutions(base: int = BASE_RESOLUTION, pinpoints=PINPOINTS) -> list[tuple[int, int]]:
    """(width, height) of every grid, in the order given."""
    if base < 1:
        raise ValueError(f"base resolution must be positive, got {base}")
    return [(c * base, r * base) for c, r in map(parse_grid, pinpoints)]


def select_llava(size: tuple[int, int], candidates: list[tuple[int, int]]) -> tuple[int, int]:
    """LLaVA-NeXT rule: largest effective resolution, then least waste. ``size`` is (w, h)."""
    w0, h0 = size
    best, best_key = None, None
    for w, h in candidates:
        s = min(w / w0, h / h0)
        eff = min(int(w0 * s) * int(h0 * s), w0 * h0)
        key = (eff, -(w * h - eff))
        if best_key is None or key > best_key:
            best, best_key = (w, h), key
    return best


def select_aspect(size: tuple[int, int], candidates: list[tuple[int, int]]) -> tuple[int, int]:
    """Aspect rule: closest height/width ratio, then closest area. ``size`` is (w, h)."""
    w0, h0 = size
    ar0, a0 = h0 / w0, w0 * h0
    best, best_key = None, None
    for w, h in candidates:
        ar, a = h / w, w * h
        key = (max(ar, ar0) / min(ar, ar0), max(a, a0) / min(a, a0))
        if best_key is None or key < best_key:
            best, best_key = (w, h), key
    return best


@dataclass
class TilingDecision:
    """What the tiler decided, for the workbook to show."""

    image_size: tuple[int, int]                 # (w, h) of the input
    base: int
    candidates: list[tuple[int, int]]
    llava_choice: tuple[int, int]
    aspect_choice: tuple[int, int]
    chosen: tuple[int, int]
    grid: tuple[int, int]                       # (columns, rows)
    table: list[dict] = field(default_factory=list)   # one row per candidate with both rules' scores

    @property
    def n_tiles(self) -> int:
        """Number of views including the global one."""
        return self.grid[0] * self.grid[1] + 1


def choose_resolution(size: tuple[int, int], base: int = BASE_RESOLUTION, pinpoints=PINPOINTS) -> TilingDecision:
    """Apply both rules and keep the smaller-area choice (LLaVA-NeXT on a tie)."""
    w0, h0 = size
    if w0 < 1 or h0 < 1:
        raise ValueError(f"image has a zero side: size {w0}x{h0}")
    cands = candidate_resolutions(base, pinpoints)
    a, b = select_llava(size, cands), select_aspect(size, cands)
    chosen = b if a[0] * a[1] > b[0] * b[1] else a
    table = []
    for w, h in cands:
        s = min(w / w0, h / h0)
        eff = min(int(w0 * s) * int(h0 * s), w0 * h0)
        table.append(dict(grid=f"{w // base}x{h // base}", width=w, height=h, effective=eff, waste=w * h - eff,
                          aspect_ratio_diff=max(h / w, h0 / w0) / min(h / w, h0 / w0),
                          area_ratio=max(w * h, w0 * h0) / min(w * h, w0 * h0)))
    return TilingDecision((w0, h0), base, cands, a, b, chosen, (chosen[0] // base, chosen[1] // base), table)


# --------------------------------------------------------------------------- images in

def to_pil_rgb(image) -> Image.Image:
    """Any supported image input as an RGB PIL image.

    Accepts a path, a PIL image of any mode (RGBA/LA/P composited on white, L, I;16, I, F, CMYK),
    a numpy array or torch tensor in HWC or CHW layout, uint8 (0..255) or float (0..1).

    * A file is turned upright by its EXIF orientation (so is a PIL image just opened from a file,
      untouched). Of an animated file (GIF, APNG, WebP …) the first frame is used and a
      ``UserWarning`` names the file and its number of frames; an animated PIL image uses its
      current frame, also with a warning.
    * Layout of arrays: a numpy array is read as HWC when its last axis can be channels (1, 3 or 4),
      else as CHW; a torch tensor the other way round (CHW first, as torchvision), so a
      ``[3, H, 4]`` tensor is a 3-channel image of width 4. Tensors of any float dtype (bf16 too)
      and on any device are accepted.
    * A user mistake raises ``FileNotFoundError`` (missing path) or ``ValueError`` naming the input
      and what is wrong (unreadable or truncated file, bad shape, dtype or value range, zero side).
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.exists():
            raise FileNotFoundError(f"image file not found: {path}")
        if path.is_dir():
            raise ValueError(f"{path} is a folder, not an image file")
        try:
            with Image.open(path) as im:
                n_frames = getattr(im, "n_frames", 1)
                im.seek(0)
                im.load()
                image = im.copy()
                exif = im.getexif()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise ValueError(f"{path} is not a readable image (truncated, corrupt or not an image): {e}") from None
        if n_frames > 1:
            warnings.warn(f"{path} is animated ({n_frames} frames): only the first frame is used",
                          UserWarning, stacklevel=2)
        image = _exif_upright(image, exif)
    elif isinstance(image, Image.Image) and image.format:
        # a PIL image straight from Image.open (not yet decoded): treat it as its file would be treated
        name = getattr(image, "filename", "") or f"the {image.format} image"
        try:
            image.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise ValueError(f"{name} is not a readable image (truncated, corrupt or not an image): {e}") from None
        if getattr(image, "n_frames", 1) > 1:
            warnings.warn(f"{name} is animated ({image.n_frames} frames): frame {image.tell()} "
                          "(the current one) is used", UserWarning, stacklevel=2)
        image = _exif_upright(image, image.getexif())
    from_tensor = isinstance(image, torch.Tensor)
    if from_tensor:
        t = image.detach()
        if t.is_floating_point() and t.dtype not in (torch.float16, torch.float32, torch.float64):
            t = t.float()                                   # bf16, fp8 …: numpy has no such dtype
        image = t.cpu().numpy()
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image, prefer_chw=from_tensor)
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a path, PIL image, numpy array or tensor, got {type(image).__name__}")
    if image.width < 1 or image.height < 1:
        raise ValueError(f"image has a zero side: size {image.width}x{image.height}")
    return _mode_to_rgb(image)


def _exif_upright(image: Image.Image, exif) -> Image.Image:
    """Apply an EXIF orientation other than 1 (the image is transposed, the tag dropped)."""
    if exif is None or exif.get(274, 1) in (1, None):
        return image
    from PIL import ImageOps
    try:
        return ImageOps.exif_transpose(image)
    except Exception as e:                                  # a malformed EXIF block
        warnings.warn(f"ignoring an unusable EXIF orientation ({e})", UserWarning, stacklevel=3)
        return image


def _mode_to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        if im.mode == "F" and a.max() <= 1.0:
            hi = 1.0
        g = np.clip(a / hi * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(g).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as e:
        raise ValueError(f"cannot convert a PIL image of mode {im.mode!r} to RGB: {e}") from None


def _array_to_pil(a: np.ndarray, prefer_chw: bool = False) -> Image.Image:
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3:
        raise ValueError(f"an image array must be HW, HWC or CHW, got shape {tuple(a.shape)}")
    chw = a.shape[0] in (1, 3, 4) and (prefer_chw or a.shape[-1] not in (1, 3, 4))
    if chw:
        a = np.moveaxis(a, 0, -1)           # CHW -> HWC
    if a.shape[-1] not in (1, 3, 4):
        raise ValueError(f"cannot tell the channel axis of an image array of shape {tuple(a.shape)}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"image has a zero side: array shape {tuple(a.shape)}")
    if a.dtype == np.uint8:
        u8 = a
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ValueError("image array contains NaN or infinite values")
        if a.min() < 0 or a.max() > 1:
            raise ValueError(f"float image arrays must lie in [0, 1], got range [{a.min():.3g}, {a.max():.3g}]")
        u8 = np.round(a * 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.integer) or a.dtype == bool:
        if a.min() < 0 or a.max() > 255:
            raise ValueError(f"integer image arrays must lie in [0, 255], got range [{a.min()}, {a.max()}]")
        u8 = a.astype(np.uint8) * (255 if a.dtype == bool else 1)
    else:
        raise ValueError(f"unsupported image array dtype {a.dtype}")
    u8 = np.ascontiguousarray(u8[..., 0] if u8.shape[-1] == 1 else u8)
    return _mode_to_rgb(Image.fromarray(u8))      # HW -> L, HWx3 -> RGB, HWx4 -> RGBA


def to_tensor(image: Image.Image, normalize: bool = True) -> torch.Tensor:
    """RGB PIL image -> float tensor ``[3, H, W]``, CLIP-normalised when ``normalize``."""
    x = torch.from_numpy(np.asarray(image, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return clip_normalize(x) if normalize else x


# --------------------------------------------------------------------------- tiling

@dataclass
class Tiles:
    """Output of :func:`tile_image`.

    ``pixels``: ``[n_tiles, 3, base, base]`` (tiles row-major, global view last);
    ``positions``: ``[n_tiles, 2]`` normalised tile centres (x, y); ``decision``: the choice made.
    """

    pixels: torch.Tensor
    positions: torch.Tensor
    decision: TilingDecision
    images: list[Image.Image]

    def __len__(self) -> int:
        return self.pixels.shape[0]


def tile_positions(grid: tuple[int, int]) -> torch.Tensor:
    """``[C*R + 1, 2]`` centres of the tiles of a ``(C, R)`` grid in row-major order, then (0.5, 0.5)."""
    c, r = grid
    ys, xs = torch.meshgrid((torch.arange(r) + 0.5) / r, (torch.arange(c) + 0.5) / c, indexing="ij")
    pos = torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)
    return torch.cat([pos, torch.tensor([[0.5, 0.5]])], dim=0)


def tile_image(image, base: int = BASE_RESOLUTION, pinpoints=PINPOINTS, keep_ratio: bool = False,
               normalize: bool = True, device=None, dtype=None) -> Tiles:
    """Cut an image into any-res tiles plus the global view (see module docstring).

    ``keep_ratio=True`` pads instead of stretching (black borders, as the published option).
    """
    im = to_pil_rgb(image)
    decision = choose_resolution(im.size, base, pinpoints)
    W, H = decision.chosen
    if keep_ratio:
        s = min(W / im.width, H / im.height)
        nw, nh = min(W, max(1, round(im.width * s))), min(H, max(1, round(im.height * s)))
        canvas = Image.new("RGB", (W, H), (0, 0, 0))
        canvas.paste(im.resize((nw, nh), Image.BICUBIC), ((W - nw) // 2, (H - nh) // 2))
        resized = canvas
    else:
        resized = im.resize((W, H), Image.BICUBIC)
    crops = [resized.crop((x, y, x + base, y + base)) for y in range(0, H, base) for x in range(0, W, base)]
    crops.append(im.resize((base, base), Image.BICUBIC))
    pixels = torch.stack([to_tensor(c, normalize) for c in crops]).to(device=device, dtype=dtype or torch.float32)
    positions = tile_positions(decision.grid).to(device=device, dtype=dtype or torch.float32)
    return Tiles(pixels, positions, decision, crops)
