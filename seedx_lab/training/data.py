"""Training data and stage-a heads: the ViT's views and per-cell labels, and the stage-b timesteps.

Every example is a function of ``(config seed, stage, step, index)`` (:func:`_seed_of`), so a resumed or
side-by-side run sees exactly the examples of an uninterrupted one.
"""
from __future__ import annotations

import random

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..anyres import tile_image, to_tensor
from ..shapeworld import world as W
from .config import N_POS, STAGES, TrainConfig

def _seed_of(cfg: TrainConfig, stage: str, step: int, i: int) -> int:
    return (cfg.seed * 1_000_003 + STAGES.index(stage) * 10_000_019 + step * 997 + i) % (2 ** 31)


def image_to_unit(image) -> torch.Tensor:
    """PIL RGB -> ``[3, H, W]`` in [0, 1]."""
    return to_tensor(image, normalize=False)


def position_labels(scene: W.Scene) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour and shape class at each of the 5 positions (0 = nothing there): two ``[5]`` tensors."""
    col = torch.zeros(N_POS, dtype=torch.long)
    shp = torch.zeros(N_POS, dtype=torch.long)
    colours = list(W.COLOURS)
    for o in scene.objects:
        p = W.POSITIONS.index(o.position)
        col[p] = colours.index(o.colour) + 1
        shp[p] = W.SHAPES.index(o.shape) + 1
    return col, shp


#: colours that stand for shapes in a shape-coded render (any four well-separated palette colours)
SHAPE_CODE = {"circle": "red", "square": "green", "triangle": "blue", "star": "yellow"}


def _classify(unit: torch.Tensor, palette: torch.Tensor, grid: int) -> torch.Tensor:
    """``[3, H, W]`` in [0, 1] -> per-cell class ``[grid*grid]``: the palette index most pixels of the cell
    are nearest to (palette ``[K, 3]`` in [0, 1])."""
    d = ((unit.permute(1, 2, 0)[:, :, None, :] - palette) ** 2).sum(-1)          # [H, W, K]
    nearest = F.one_hot(d.argmin(-1), palette.shape[0]).float()                  # [H, W, K]
    h, w, k = nearest.shape
    votes = nearest.view(grid, h // grid, grid, w // grid, k).sum((1, 3))        # [grid, grid, K]
    return votes.argmax(-1).reshape(-1)


def cell_labels(scene: W.Scene, image, base: int, view: int):
    """Colour class (0 = background, 1.. = ``COLOURS``) and shape class (0 = background, 1.. = ``SHAPES``)
    of each of the 16x16 cells of any-res view ``view`` of ``image``: two ``[256]`` tensors."""
    colours = torch.tensor([scene.background, *W.COLOURS.values()], dtype=torch.float) / 255
    coded = W.Scene(scene.width, scene.height, (255, 255, 255),
                    [W.Obj(o.shape, SHAPE_CODE[o.shape], o.size, o.cx, o.cy) for o in scene.objects])
    shape_palette = torch.tensor([(255, 255, 255)] + [W.COLOURS[SHAPE_CODE[sh]] for sh in W.SHAPES], dtype=torch.float) / 255
    col = _classify(image_to_unit(tile_image(image, base=base, normalize=False).images[view]), colours, 16)
    shp = _classify(image_to_unit(tile_image(W.render(coded), base=base, normalize=False).images[view]), shape_palette, 16)
    return col, shp


def vit_example(seed: int, global_view: bool, base: int):
    """One ViT training view: a square caption image's global view (with what-is-where labels) or a
    random any-res view of a comprehension image (a tile: labels -100). Returns pixels ``[3, base, base]``,
    cell pixels ``[256, 3*c*c]``, cell colour and shape classes ``[256]`` each, and ``[5]`` colour / shape."""
    sample = W.caption_image_sample(seed) if global_view else W.comprehension_sample(seed)
    views = tile_image(sample.image, base=base)
    k = len(views) - 1 if global_view else random.Random(seed).randrange(len(views))
    ccol, cshp = cell_labels(sample.scene, sample.image, base, k)
    if k == len(views) - 1:
        col, shp = position_labels(sample.scene)
    else:                                                # a tile: positions are not defined
        col = shp = torch.full((N_POS,), -100, dtype=torch.long)
    return views.pixels[k], _cells(image_to_unit(views.images[k]), 16), ccol, cshp, col, shp


_VIT_POOLS: dict = {}


def vit_pool(cfg: TrainConfig, base: int, progress: bool = False):
    """``cfg.vit_pool`` views rendered (and labelled) once, as six stacked tensors: rendering the labels
    costs more than a training step of the tiny ViT, so stage a draws its batches from this pool."""
    key = (cfg.seed, cfg.vit_pool, base)
    if key not in _VIT_POOLS:
        rows = [vit_example(_seed_of(cfg, "vit", 0, 20_000_000 + k), k % 2 == 0, base)
                for k in tqdm(range(cfg.vit_pool), desc="render ViT views", disable=not progress, mininterval=1.0)]
        _VIT_POOLS.clear()                                  # one pool at a time (a few hundred MB)
        _VIT_POOLS[key] = tuple(torch.stack(x) for x in zip(*rows))
    return _VIT_POOLS[key]


def vit_batch(cfg: TrainConfig, step: int, base: int):
    """Half square caption images (global views, with position labels), half random any-res views:
    ``cfg.vit_batch`` of them drawn from :func:`vit_pool` (or rendered afresh when ``cfg.vit_pool`` is 0).

    Returns pixels ``[B, 3, base, base]``, cell pixels ``[B, 256, 3*c*c]``, cell colour and shape classes
    ``[B, 256]`` each, and what-is-where labels ``[B, 5]`` (colour) and ``[B, 5]`` (shape; -100 for tiles).
    """
    if cfg.vit_pool:
        pool = vit_pool(cfg, base)
        g = torch.Generator().manual_seed(_seed_of(cfg, "vit", step, 0))
        idx = torch.randint(0, cfg.vit_pool, (cfg.vit_batch,), generator=g)
        return tuple(t[idx] for t in pool)
    rows = [vit_example(_seed_of(cfg, "vit", step, i), i % 2 == 0, base) for i in range(cfg.vit_batch)]
    return tuple(torch.stack(x) for x in zip(*rows))


def _cells(x: torch.Tensor, grid: int) -> torch.Tensor:
    """``[3, H, W]`` -> ``[grid*grid, 3*(H/grid)*(W/grid)]``, cells in raster order."""
    c, h, w = x.shape
    ch, cw = h // grid, w // grid
    return x.view(c, grid, ch, grid, cw).permute(1, 3, 0, 2, 4).reshape(grid * grid, c * ch * cw)


class ViTHeads(nn.Module):
    """Training-only heads of stage a."""

    def __init__(self, dim: int, cell_values: int):
        super().__init__()
        nc, ns = len(W.COLOURS) + 1, len(W.SHAPES) + 1
        self.cell = nn.Linear(dim, cell_values + nc + ns + 2)      # pixels, colour, shape, (x, y) of each token
        self.colour = nn.Linear(dim, N_POS * nc)
        self.shape = nn.Linear(dim, N_POS * ns)
        self.object_shape = nn.Linear(dim, ns - 1)                 # from the mean over one shape's cells
        self.split = (cell_values, nc, ns, 2)

    def forward(self, feats):                           # feats [B, 256, D]
        g = feats.mean(1)
        pixels, colour, shape, xy = self.cell(feats).split(self.split, dim=-1)
        return (pixels, colour, shape, xy, self.colour(g).view(-1, N_POS, self.split[1]),
                self.shape(g).view(-1, N_POS, self.split[2]))

    def shapes_present(self, cell_shape) -> int:
        """How many (image, shape) pairs :meth:`object_shape_loss` averages over (cell_shape ``[B, 256]``)."""
        member = F.one_hot(cell_shape, self.object_shape.out_features + 1)[..., 1:]     # [B, 256, S]
        return int((member.sum(1) > 0).sum())

    def object_shape_loss(self, feats, cell_shape):
        """Cross-entropy of naming each shape present from the *mean* of the tokens of its cells
        (feats ``[B, 256, D]``, cell_shape ``[B, 256]``, 0 = background). One token alone cannot tell a
        circle's inside from a square's; averaged, the tokens along the outline can, which is how the
        resamplers (attention = weighted means) will read them."""
        ns = self.object_shape.out_features
        member = F.one_hot(cell_shape, ns + 1)[..., 1:].to(feats.dtype)              # [B, 256, S]
        count = member.sum(1)                                                       # [B, S]
        pooled = torch.einsum("bns,bnd->bsd", member, feats) / count.clamp(min=1)[..., None]
        present = count > 0
        if not bool(present.any()):
            return feats.sum() * 0
        target = torch.arange(ns, device=feats.device).expand_as(count)[present]
        return F.cross_entropy(self.object_shape(pooled[present]), target)


def unet_timesteps(cfg: TrainConfig, generator: torch.Generator, n: int, T: int = 1000):
    """``n`` training timesteps for stage b: logit-normal ``T * sigmoid(N(unet_t_mean, unet_t_std))`` (``[n]`` ints
    in [0, T)), or None (uniform, drawn by the de-tokenizer) when ``unet_t_mean`` is None."""
    if cfg.unet_t_mean is None:
        return None
    u = torch.randn(n, generator=generator) * cfg.unet_t_std + cfg.unet_t_mean
    return (torch.sigmoid(u) * T).long().clamp(0, T - 1)
