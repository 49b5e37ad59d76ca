"""Fixed 2-D sine-cosine position tables, shared by the resamplers and the ViT.

A table for a G x G grid has one row per grid cell, in raster order
(token ``t = row * G + col``).  Its width ``D`` (a multiple of 4) is split in
two halves, following the published Qwen-VL / SEED-X convention:

    table[t, :D/2]  = [sin(col * w), cos(col * w)]     (x, the column)
    table[t, D/2:]  = [sin(row * w), cos(row * w)]     (y, the row)

with ``D/4`` frequencies ``w_i = 10000 ** (-i / (D/4))``, ``i = 0 .. D/4-1``.
(The published helper names the first half "h", but it is fed the column
coordinate because ``np.meshgrid`` puts ``w`` first; the layout above is what
its numbers are.)

``resize_2d`` resamples such a table to another square token count with
bicubic interpolation, as Qwen-VL does when a resampler sees a number of keys
that differs from its own query grid (e.g. 8x8 table, 16x16 keys).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["sincos_1d", "sincos_2d", "resize_2d", "square_side"]


def square_side(n: int, what: str = "token count") -> int:
    """Return ``s`` with ``s * s == n`` or raise a ValueError naming ``what``."""
    s = math.isqrt(int(n)) if n >= 0 else -1
    if n <= 0 or s * s != n:
        raise ValueError(f"{what} must be a positive square number (G*G), got {n}")
    return s


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """positions [M] -> [M, dim] = [sin(p * w), cos(p * w)], ``dim/2`` frequencies.

    Computed in float64; callers cast.
    """
    if dim % 2 != 0:
        raise ValueError(f"sincos_1d needs an even width, got {dim}")
    half = dim // 2
    freqs = 1.0 / 10000.0 ** (torch.arange(half, dtype=torch.float64) / half)  # [dim/2]
    angles = positions.to(torch.float64).reshape(-1, 1) * freqs  # [M, dim/2]
    return torch.cat([angles.sin(), angles.cos()], dim=1)  # [M, dim]


def sincos_2d(dim: int, grid_size: int, *, device=None, dtype=None) -> torch.Tensor:
    """Fixed 2-D position table -> [grid_size * grid_size, dim] (raster order).

    Values are computed in float64 on the CPU, then moved to ``device`` /
    ``dtype`` (default float32), so ``device="meta"`` works too.
    """
    if dim % 4 != 0:
        raise ValueError(f"a 2-D sin-cos table needs a width divisible by 4, got {dim}")
    if grid_size <= 0:
        raise ValueError(f"grid_size must be positive, got {grid_size}")
    idx = torch.arange(grid_size * grid_size)
    row, col = idx // grid_size, idx % grid_size  # [G*G] each
    table = torch.cat([sincos_1d(dim // 2, col), sincos_1d(dim // 2, row)], dim=1)  # [G*G, dim]
    return table.to(device=device, dtype=dtype or torch.float32)


def resize_2d(table: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """table [L, D] on a sqrt(L) grid -> [n_tokens, D] on a sqrt(n_tokens) grid.

    Returns ``table`` itself when the sizes already agree.  Bicubic,
    ``align_corners=False``, computed in float32 and cast back to the table's
    dtype (as the published code does).
    """
    if table.dim() != 2:
        raise ValueError(f"position table must be 2-D [L, D], got shape {tuple(table.shape)}")
    src = square_side(table.shape[0], "position table length")
    dst = square_side(n_tokens, "number of tokens to place on a 2-D grid")
    if src == dst:
        return table
    grid = table.float().reshape(1, src, src, -1).permute(0, 3, 1, 2)  # [1, D, src, src]
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)  # [1, D, dst, dst]
    return grid.permute(0, 2, 3, 1).reshape(dst * dst, -1).to(table.dtype)  # [dst*dst, D]
