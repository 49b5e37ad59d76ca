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

from dataclasses import dataclass, field

import torch
from PIL import Image

PINPOINTS: tuple[str, ...] = ("1x1", "1x2", "1x3", "2x1", "3x1", "1x4", "4x1", "2x2")
BASE_RESOLUTION = 448          # published tile size; seedx-tiny uses 64

from . import validate as V
from .images import to_pil_rgb, to_tensor


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
    base = V.tile_base("base", base)
    im = to_pil_rgb(image)
    decision = choose_resolution(im.size, base, pinpoints)
    W, H = decision.chosen
    V.tile_grid("tile_image", W, H)          # before the resized canvas is allocated
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
