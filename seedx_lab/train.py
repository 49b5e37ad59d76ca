"""Three-stage training of seedx-tiny on the shape world, as in the SEED-X paper, on a CPU.

Stage a — visual encoder. The ViT is trained *supervised*: (1) every one of its 256 output
tokens reconstructs the pixels of its own 4x4 cell of the 64-pixel view, names the colour and the
shape of the object that covers the cell (or background; object cells weigh more) and says where
the cell is (x, y);
(2) from the mean of its tokens, small heads name the colour and the shape found at each of the
five positions (left/right/top/bottom/centre) of a global view; and (3) from the mean of the
tokens of each shape's cells, a head names that shape (the outline, spread over many tokens, is what
tells a circle from a square). Views are rendered once into a pool (``vit_pool``), because drawing
the labels costs more than a training step. Why not contrastive with captions? With a
few hundred distinct captions a contrastive loss saturates quickly and says nothing about
*where* things are; the de-tokenizer needs features that keep the picture (the per-cell
target makes token i stand for cell i, so the published 1-D pooling of 4 consecutive tokens is
meaningful), and the describer needs features that name attributes (the heads). The heads are
thrown away after this stage.

Stage b — de-tokenizer. The VAE learns to reconstruct world images (object pixels weigh
``vae_foreground_weight`` times the background, plus an L1 term: with plain MSE a fifth of the
held-out objects came back in the wrong hue, e.g. red turned purple), its latent scale is
calibrated, then the adapter + UNet learn to denoise latents conditioned on the *pooled* (64-token)
ViT features of the frozen encoder — exactly what the output resampler will hand
them at inference. Their timesteps are drawn logit-normal, leaning to the noisy end where the layout is
decided (uniform timesteps drew 0.765 of 200 validation captions right from the true features, this 0.795;
centred at the middle, 0.625).

Stage c — LLM + input and output resamplers, with the LM loss (text and the ``<img>`` opener of
every generated image) and the regression loss on the 64 pooled features, over a mix of
caption→image, image→text (any-res tiles, SEED-X-I template), interleaved stories and
text-only samples (``llm_mix``: the task of each step in turn, six caption steps, five comprehension
steps and one story step in every twelve of 2,000). The mix is a time budget: on one CPU thread a caption
step costs about 0.17 s, a comprehension step 0.92 s and a story step 0.44 s. Caption steps are short
sequences, so they are cheap, and their share is what draws images right (three in six steps instead of one
in four lifted the drawn images from 0.63 to 0.78 of 100 validation captions, stage c alone on the same ViT and
de-tokenizer); comprehension steps are what describe right (three in seven instead of two lifted naming the
first object of 200 test pictures from 0.86 to 0.90, three seeds each, stage c alone on a GPU); stories are
learnt quickly, but one story step in fourteen or sixteen let the model read ``<img>`` into plain text in two
runs of three (false_boi 0.30), one in twelve did not (0.025). README, "seedx-tiny", has the runs.

Describing fails on binding (objects alone are named right; objects with company borrow each other's
attributes), and what helped is seeing more scenes with company: the comprehension pool (3,000
pictures) keeps only 0.2 of the one-object scenes (``comprehension_keep_single``), and a comprehension step
reads 24 pictures (``comprehension_batch``) of one view count (``comprehension_buckets``: a batch is not
padded to five views, about 30 % fewer tokens). Stage c alone, naming the first object of 300 validation
pictures went 0.727 (all scenes, 8 pictures a step) -> 0.767 (0.35 of lone scenes) -> 0.833 (16 pictures),
and eight variants at a time on a GPU put 24 pictures and the 0.2 pool at about 0.85 over seeds. More
pictures with company also made the model read ``<img>`` into plain text (a full run: false_boi 0.055),
so 0.6 of a story step's sequences are text-only samples (``story_text_only``; 0.3 before). With these
batches the LLM learns at 1e-3 (2e-3 described worse, 2.5e-3 diverged).

Stages b and c both start from the finished ViT and never read each other, so on a CPU they run side by
side (``parallel``, the default): two spawned "lanes", ``detok`` (stage b) and ``llm`` (stage c), of half the
threads each. Models this small use a second thread poorly, so two one-thread processes get more done per
second than one two-thread process (``benchmarks/lanes.py``). A lane's weights are what one process with
the lane's thread count would write, bit for bit (a test checks it).

Everything is seeded; progress bars show each stage (a lane's progress is drawn by the parent); every stage
logs to ``train_log.csv``; a resumable state (``state.pt``; ``state-detok.pt`` and ``state-llm.pt`` while
the lanes run, merged into ``state.pt`` when both are done; all written atomically) is kept in the work
directory.
"""
from __future__ import annotations

import csv
import json
import math
import os
import queue
import random
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import tokens as T
from . import world as W
from .anyres import tile_image, to_tensor
from .lvlm import pool_targets
from .model import DESCRIBE_QUESTION, SeedX, SeedXConfig

STAGES = ("vit", "vae", "unet", "llm")
STAGE_ORDER = ("vit", "vae", "vae_calibrated", "unet", "llm")      # entries of a state's ``done`` list
# stages b and c as two lanes that may run side by side once the ViT is trained, and the parameters each owns
LANES = {"detok": ("vae", "vae_calibrated", "unet"), "llm": ("llm",)}
LANE_PARAMS = {"detok": "detok.", "llm": "lvlm."}
LLM_TASKS = ("caption", "comprehension", "story")
N_POS = len(W.POSITIONS)


@dataclass
class TrainConfig:
    out: str = "data/seedx-tiny"          # where the finished checkpoint goes
    work: str = "runs/seedx-tiny"         # resumable state and logs
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    vit_steps: int = 1400
    vit_batch: int = 32
    vit_pool: int = 4000                  # views rendered once for stage a (0: render every batch afresh)
    vit_shape_weight: float = 4.0         # weight of object cells (vs background) in the per-cell shape loss
    vit_object_weight: float = 1.0        # weight of the shape-from-mean-of-its-cells loss
    vit_colour_weight: float = 4.0        # weight of object cells (vs background) in the per-cell colour loss
    vae_steps: int = 300
    vae_batch: int = 32
    vae_foreground_weight: float = 5.0    # object pixels weigh this much more than background in the VAE loss
    vae_l1_weight: float = 0.5            # L1 term of the VAE reconstruction error (keeps flat colours saturated)
    cache_size: int = 4000                # caption images whose features/latents are cached
    comprehension_pool: int = 3000        # comprehension samples whose view features are cached
    # chance that a one-object scene is kept in that pool (1.0: the world's own mix, about half of the
    # scenes). Lone objects are named right almost always; scenes of 2-3 objects are where describing fails
    comprehension_keep_single: float = 0.2
    story_pool: int = 1500                # stories whose image features are cached
    # chance that a story step's sequence is a text-only sample (no image belongs) rather than a story:
    # what teaches the model to keep <img> to itself
    story_text_only: float = 0.6
    unet_steps: int = 2700
    unet_batch: int = 32
    llm_steps: int = 2000
    llm_batch: int = 16
    # batch of a comprehension step (its sequences are long, up to five views of 64 tokens: a step of 24 costs
    # about seven caption steps of 16)
    comprehension_batch: int = 24
    # each comprehension batch holds pictures of one view count (2-5 views), so a batch is not padded to the
    # longest picture in it: about 30 % fewer tokens per step, the same pictures in the same proportions
    comprehension_buckets: bool = True
    # stage c's task of each step, in turn (caption = caption -> image, comprehension = image -> text,
    # story = interleaved or text-only)
    llm_mix: tuple = ("caption", "comprehension", "caption", "story", "comprehension", "caption", "comprehension",
                      "caption", "comprehension", "caption", "comprehension", "caption")
    lr: float = 1e-3
    unet_lr: float | None = None          # learning rate of stage b's adapter + UNet (None: ``lr``)
    # stage b's training timesteps: t = T * sigmoid(N(mean, std)) (logit-normal), or uniform when mean is None.
    # mean 1 leans to the noisy end, where the layout is decided
    unet_t_mean: float | None = 1.0
    unet_t_std: float = 1.0
    llm_lr: float = 1e-3
    ckpt_every: int = 200
    log_every: int = 10
    # stages b (VAE, adapter + UNet) and c (LLM) need the finished ViT but not each other: on a CPU they run
    # side by side in two processes ("lanes") of half the threads each, because these small models use a
    # second thread poorly (one step on two threads is only 1.5-1.7x as fast as on one). False, or a device
    # other than the CPU: one stage after another in this process
    parallel: bool = True
    quick: bool = False

    def __post_init__(self):
        self.llm_mix = tuple(self.llm_mix)
        if isinstance(self.comprehension_batch, bool) or not isinstance(self.comprehension_batch, int) \
                or self.comprehension_batch < 1:
            raise ValueError(f"comprehension_batch must be a positive int, got {self.comprehension_batch!r}")
        if not 0.0 <= self.story_text_only <= 1.0:
            raise ValueError(f"story_text_only must be in [0, 1], got {self.story_text_only}")
        if not 0.0 < self.comprehension_keep_single <= 1.0:
            raise ValueError(f"comprehension_keep_single must be in (0, 1], got {self.comprehension_keep_single}")
        bad = [k for k in self.llm_mix if k not in LLM_TASKS]
        if not self.llm_mix or bad:
            raise ValueError(f"llm_mix must be a non-empty sequence of {', '.join(LLM_TASKS)}; got {list(self.llm_mix)}")

    @classmethod
    def quick_run(cls, **kw) -> "TrainConfig":
        """A few minutes on a CPU: same code path, far fewer steps (losses fall, quality is low)."""
        base = dict(vit_steps=40, vit_batch=16, vit_pool=0, vae_steps=30, vae_batch=16, cache_size=128, comprehension_pool=32,
                    story_pool=32, unet_steps=60, unet_batch=16, llm_steps=90, llm_batch=8, comprehension_batch=4,
                    ckpt_every=50, quick=True,
                    out="runs/seedx-quick/model", work="runs/seedx-quick")
        base.update(kw)
        return cls(**base)


def build_tokenizer():
    return T.build_tokenizer(W.vocabulary())


def build_model(seed: int = 0, device="cpu") -> SeedX:
    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = SeedXConfig.tiny(vocab_size=len(tok))
    return SeedX(cfg, tok, device=device)


# --------------------------------------------------------------------------- logging / state

class CSVLog:
    """Appends ``stage, step, name=value…`` rows to a CSV file (kept across resumes)."""

    FIELDS = ("stage", "step", "loss", "part1", "part2", "lr", "elapsed_s")

    def __init__(self, path: Path, t0: float | None = None):
        self.path = path
        new = not path.exists()
        self.f = open(path, "a", newline="")
        self.w = csv.DictWriter(self.f, fieldnames=self.FIELDS)
        if new:
            self.w.writeheader()
            self.f.flush()
        self.t0 = time.time() if t0 is None else t0       # a lane process counts from its parent's start

    def write(self, stage, step, loss, part1=None, part2=None, lr=None):
        self.w.writerow(dict(stage=stage, step=step, loss=f"{loss:.5f}",
                             part1="" if part1 is None else f"{part1:.5f}",
                             part2="" if part2 is None else f"{part2:.5f}",
                             lr="" if lr is None else f"{lr:.2e}", elapsed_s=f"{time.time() - self.t0:.1f}"))
        self.f.flush()

    def close(self):
        self.f.close()


def _atomic_save(obj, path: Path):
    """``torch.save`` to ``path.tmp``, then rename over ``path``: an interrupted save leaves the previous
    file intact and no temporary behind."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def unet_timesteps(cfg: TrainConfig, generator: torch.Generator, n: int, T: int = 1000):
    """``n`` training timesteps for stage b: logit-normal ``T * sigmoid(N(unet_t_mean, unet_t_std))`` (``[n]`` ints
    in [0, T)), or None (uniform, drawn by the de-tokenizer) when ``unet_t_mean`` is None."""
    if cfg.unet_t_mean is None:
        return None
    u = torch.randn(n, generator=generator) * cfg.unet_t_std + cfg.unet_t_mean
    return (torch.sigmoid(u) * T).long().clamp(0, T - 1)


def _cosine(step, total, base, warmup=20):
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# --------------------------------------------------------------------------- data helpers

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


# --------------------------------------------------------------------------- stage c sequences
# A sequence is a list of pieces: ("text", str, labelled) | ("gen", features [256, D])
# | ("cmp", features [views, 256, D], positions [views, 2]). The same builders serve evaluation.

def caption_pieces(caption: str, feats=None):
    return [("text", caption, True), ("gen", feats)]


def comprehension_pieces(feats, pos, question: str, answer: str | None):
    pieces = [("text", "[INST]", False), ("cmp", feats, pos), ("text", " " + question + " [/INST]", False)]
    return pieces + ([("text", answer, True)] if answer is not None else [])


def story_pieces(segments, feats=None):
    pieces, j = [], 0
    for seg in segments:
        if isinstance(seg, str):
            pieces.append(("text", seg + " ", True))
        else:
            pieces.append(("gen", None if feats is None else feats[j]))
            j += 1
    return pieces


def encode_pieces(model: SeedX, pieces):
    """Pieces -> (ids, labels, gen_flags, cmp_feats, cmp_pos, gen_feats).

    Labels follow SEED-X: text marked ``labelled`` and ``</s>``, and the ``<img>`` of each generated
    block; image tokens never. ``gen_flags`` has one entry per image block: True (generated, with a
    regression target), False (comprehension) or None (generated block without a target).
    """
    m = model
    ids, labels, flags, cf, cp, gf = [m.tokenizer.bos_token_id], [-100], [], [], [], []
    n_tok = m.lvlm.num_img_tokens
    tid = m.token_ids
    for p in pieces:
        if p[0] == "text":
            t = m.tokenizer.encode(p[1], add_special_tokens=False)
            ids += t
            labels += t if p[2] else [-100] * len(t)
        elif p[0] == "gen":
            ids += [tid.boi, *tid.img[:n_tok], tid.eoi]
            labels += [tid.boi] + [-100] * (n_tok + 1)
            flags.append(None if p[1] is None else True)
            if p[1] is not None:
                gf.append(p[1])
        elif p[0] == "cmp":
            n = p[1].shape[0]
            t = m.tokenizer.encode(m.image_prompt(n), add_special_tokens=False)
            ids += t
            labels += [-100] * len(t)
            flags += [False] * n
            cf.append(p[1])
            cp.append(p[2])
        else:
            raise ValueError(f"unknown piece kind {p[0]!r}")
    ids.append(m.tokenizer.eos_token_id)
    labels.append(m.tokenizer.eos_token_id)
    return ids, labels, flags, cf, cp, gf


def collate(model: SeedX, examples, device="cpu"):
    """Right-padded batch of encoded examples, as keyword arguments of ``ContinuousLVLM.forward``."""
    pad = model.tokenizer.pad_token_id
    L = max(len(e[0]) for e in examples)
    B = len(examples)
    ids = torch.full((B, L), pad, dtype=torch.long)
    labels = torch.full((B, L), -100, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    cmp = torch.zeros((B, L), dtype=torch.bool)
    gen = torch.zeros((B, L), dtype=torch.bool)
    cf, cp, gf = [], [], []
    for b, (i, l, flags, f1, p1, f2) in enumerate(examples):
        ids[b, :len(i)] = torch.tensor(i)
        labels[b, :len(l)] = torch.tensor(l)
        att[b, :len(i)] = 1
        for blk, flag in zip(T.find_image_blocks(i, model.token_ids), flags):
            if flag is not None:
                (gen if flag else cmp)[b, blk.token_start: blk.token_start + blk.n_tokens] = True
        cf += f1
        cp += p1
        gf += f2
    return dict(input_ids=ids.to(device), attention_mask=att.to(device), labels=labels.to(device),
                image_features=torch.cat(cf).to(device) if cf else None, ids_cmp_mask=cmp.to(device) if cf else None,
                patch_positions=torch.cat(cp).to(device) if cp else None,
                target_features=torch.stack(gf).to(device) if gf else None, ids_gen_mask=gen.to(device) if gf else None)


# --------------------------------------------------------------------------- the trainer

class Trainer:
    """Runs the stages in order and keeps the resumable state. ``lane`` ("detok" or "llm") makes it the
    trainer of one lane process (see :data:`LANES`), with its own state file ``state-<lane>.pt``."""

    def __init__(self, cfg: TrainConfig, fresh: bool = False, progress: bool = True, lane: str | None = None,
                 t0: float | None = None, remote=None):
        if lane is not None and lane not in LANES:
            raise ValueError(f"lane must be one of {', '.join(LANES)}, got {lane!r}")
        self.cfg, self.lane, self.remote = cfg, lane, remote
        self.work = Path(cfg.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_path = self.work / ("state.pt" if lane is None else f"state-{lane}.pt")
        self.progress = progress
        if cfg.threads and lane is None:
            torch.set_num_threads(cfg.threads)
        self.device = torch.device(cfg.device)
        self.model = build_model(cfg.seed, self.device)
        self.done: list[str] = []
        self.resume_stage, self.resume_step, self.resume_opt = None, 0, None
        if fresh:
            for f in ("state.pt", *(f"state-{k}.pt" for k in LANES), "train_log.csv"):
                (self.work / f).unlink(missing_ok=True)
        elif self.state_path.exists():
            self._load_state(self.state_path)
        elif lane is not None:                       # a lane starts from the main state (the finished ViT)
            self._load_state(self.work / "state.pt")
        self.log = CSVLog(self.work / "train_log.csv", t0=t0)

    @property
    def parallel(self) -> bool:
        """Whether stages b and c run as two lane processes (``cfg.parallel`` on a CPU)."""
        return self.cfg.parallel and self.device.type == "cpu"

    # -- state ---------------------------------------------------------------
    def _save_state(self, stage, step, opt):
        _atomic_save(dict(config=asdict(self.cfg), done=self.done, stage=stage, step=step,
                          model=self.model.state_dict(), opt=opt.state_dict() if opt else None,
                          scaling_factor=float(self.model.detok.vae.config.scaling_factor)), self.state_path)

    def _read_state(self, path: Path) -> dict:
        try:
            st = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as e:  # a torn write cannot happen (atomic), but a foreign file can
            raise ValueError(f"cannot resume from {path}: {e}; run with --fresh") from None
        missing = [k for k in ("model", "scaling_factor", "done", "stage", "step", "opt") if k not in st] \
            if isinstance(st, dict) else ["model"]
        if missing:
            raise ValueError(f"cannot resume from {path}: missing entry {missing[0]!r} (written by a different "
                             "configuration?); run with --fresh")
        return st

    def _load_state(self, path: Path, prefix: str = ""):
        """Load a saved state into this trainer (only the parameters under ``prefix`` when merging a lane)."""
        st = self._read_state(path)
        try:
            if prefix:
                sd = self.model.state_dict()
                sd.update({k: v for k, v in st["model"].items() if k.startswith(prefix)})
                self.model.load_state_dict(sd)
            else:
                self.model.load_state_dict(st["model"])
        except (TypeError, RuntimeError, AttributeError) as e:   # another model's state, or not a state at all
            raise ValueError(f"cannot resume from {path}: {str(e).splitlines()[0]} (written by a different "
                             "configuration?); run with --fresh") from None
        if prefix in ("", LANE_PARAMS["detok"]):                # the VAE's latent scale belongs to stage b
            self.model.detok.vae.register_to_config(scaling_factor=st["scaling_factor"])
        if prefix:
            self.done = [k for k in STAGE_ORDER if k in self.done or k in st["done"]]
        else:
            self.done = list(st["done"])
            self.resume_stage, self.resume_step, self.resume_opt = st["stage"], st["step"], st["opt"]

    def _start(self, stage, opt):
        if self.resume_stage == stage and self.resume_opt is not None:
            opt.load_state_dict(self.resume_opt)
            return self.resume_step
        return 0

    def _bar(self, stage, total, start):
        if self.remote is not None:
            return _RemoteBar(self.remote, stage, start, total)
        return tqdm(range(start, total), desc=f"stage {stage}", initial=start, total=total,
                    disable=not self.progress, dynamic_ncols=True, mininterval=1.0)

    def _loop(self, stage, params, total, lr, step_fn):
        """Generic optimisation loop with cosine LR, logging, periodic atomic checkpoints."""
        if stage in self.done:
            return
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        start = self._start(stage, opt)
        torch.manual_seed(_seed_of(self.cfg, stage, start, 0))
        bar = self._bar(stage, total, start)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = _cosine(step, total, lr)
            loss, p1, p2 = step_fn(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % self.cfg.log_every == 0 or step == total - 1:
                self.log.write(stage, step, float(loss.detach()), p1, p2, opt.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if (step + 1) % self.cfg.ckpt_every == 0 and step + 1 < total:
                self._save_state(stage, step + 1, opt)
        self.done.append(stage)
        self._save_state(None, 0, None)

    # -- stages --------------------------------------------------------------
    def stage_vit(self):
        m, cfg = self.model, self.cfg
        base = m.config.tile_size
        heads = ViTHeads(m.config.vit.output_dim, 3 * (base // 16) ** 2).to(self.device)
        self.vit_heads = heads                       # kept for probing; not part of the checkpoint
        if "vit" not in self.done and cfg.vit_pool:
            vit_pool(cfg, base, progress=self.progress)
        m.vit.train()

        # shape is the hard attribute (a cell inside a circle looks like one inside a square): object
        # cells weigh more than the background in the per-cell shape loss
        shape_w = torch.tensor([1.0] + [cfg.vit_shape_weight] * len(W.SHAPES), device=self.device)
        colour_w = torch.tensor([1.0] + [cfg.vit_colour_weight] * len(W.COLOURS), device=self.device)
        g16 = (torch.arange(16, device=self.device, dtype=torch.float) + 0.5) / 16
        yy, xx = torch.meshgrid(g16, g16, indexing="ij")
        where = torch.stack([xx.reshape(-1), yy.reshape(-1)], -1)                  # [256, 2] cell centres

        def step(i):
            pix, cells, ccol, cshp, cols, shps = (t.to(self.device) for t in vit_batch(cfg, i, base))
            feats = m.vit(pix)
            p_pix, p_col, p_shp, p_xy, col_logits, shp_logits = heads(feats)
            rec = F.mse_loss(p_pix, cells)
            local = F.cross_entropy(p_col.flatten(0, 1), ccol.flatten(), weight=colour_w) + \
                F.cross_entropy(p_shp.flatten(0, 1), cshp.flatten(), weight=shape_w) + \
                10 * F.mse_loss(p_xy, where.expand_as(p_xy))
            cls = F.cross_entropy(col_logits.flatten(0, 1), cols.flatten(), ignore_index=-100) + \
                F.cross_entropy(shp_logits.flatten(0, 1), shps.flatten(), ignore_index=-100) + \
                cfg.vit_object_weight * heads.object_shape_loss(feats, cshp)
            return 10 * rec + local + cls, rec.item(), (local + cls).item()

        self._loop("vit", list(m.vit.parameters()) + list(heads.parameters()), cfg.vit_steps, cfg.lr, step)
        m.vit.eval().requires_grad_(False)

    def stage_vae(self):
        m, cfg = self.model, self.cfg
        vae = m.detok.vae
        if "vae_calibrated" not in self.done:
            vae.train()

            pool = self.caption_pool()["unit"]
            g = torch.Generator().manual_seed(cfg.seed)

            def step(i):
                g.manual_seed(_seed_of(cfg, "vae", i, 0))
                idx = torch.randint(0, pool.shape[0], (cfg.vae_batch,), generator=g)
                imgs = pool[idx].to(self.device) * 2 - 1
                flip = torch.rand(cfg.vae_batch, generator=g) < 0.5          # cheap augmentation
                imgs[flip] = imgs[flip].flip(-1)
                return m.detok.vae_loss(imgs, generator=g, foreground_weight=cfg.vae_foreground_weight,
                                       l1_weight=cfg.vae_l1_weight), None, None

            self._loop("vae", list(vae.parameters()), cfg.vae_steps, cfg.lr, step)
            calib = torch.stack([image_to_unit(W.caption_image_sample(10_000_000 + k).image) for k in range(256)])
            vae.eval()
            m.detok.calibrate_scaling_factor(calib.to(self.device) * 2 - 1)
            self.done.append("vae_calibrated")
            self._save_state(None, 0, None)
        vae.eval().requires_grad_(False)

    def caption_pool(self):
        """The first ``cache_size`` caption samples of the train split, rendered once."""
        if getattr(self, "_caption_pool", None) is None:
            samples = [W.caption_image_sample(k) for k in range(self.cfg.cache_size)]
            unit = torch.stack([image_to_unit(sm.image) for sm in samples])
            self._caption_pool = dict(samples=samples, unit=unit)
        return self._caption_pool

    @torch.no_grad()
    def _vit_features(self, unit: torch.Tensor) -> torch.Tensor:
        """``[N, 3, 64, 64]`` in [0, 1] -> ViT features ``[N, 256, D]`` (in chunks)."""
        from .vit import normalize
        return torch.cat([self.model.vit(normalize(unit[k:k + 128].to(self.device))) for k in range(0, len(unit), 128)])

    @torch.no_grad()
    def build_cache(self, detok: bool = True, llm: bool = True):
        """Frozen-encoder features of the sample pools: the caption pool's ViT features (both stages) and VAE
        latents (``detok``: stage b), the comprehension pictures' view features and the stories' image
        features (``llm``: stage c). Parts already in ``self.cache`` are kept."""
        m, cfg = self.model, self.cfg
        c = self.cache = getattr(self, "cache", None) or {}
        pool = self.caption_pool()
        todo = ["feats"] + ["latents"] * detok + ["comprehension", "stories"] * llm
        todo = [k for k in todo if k not in c]
        bar = tqdm(total=len(todo), desc="cache features", disable=not self.progress or not todo)
        c["samples"] = pool["samples"]
        if "feats" in todo:
            c["feats"] = self._vit_features(pool["unit"])
            bar.update(1)
        if "latents" in todo:
            vae = m.detok.vae
            c["latents"] = torch.cat([vae.encode(pool["unit"][k:k + 128].to(self.device) * 2 - 1).latent_dist.mean
                                      for k in range(0, len(pool["unit"]), 128)]) * vae.config.scaling_factor
            bar.update(1)
        if "comprehension" in todo:
            comp, k = [], 0
            while len(comp) < cfg.comprehension_pool:
                s = _seed_of(cfg, "llm", 0, 50_000_000 + k)
                k += 1
                # decide from the scene before rendering: most one-object candidates are dropped
                if len(W.sample_scene(s, "train", *W.aspect_for_seed(s)).objects) == 1 and \
                        random.Random(s).random() >= cfg.comprehension_keep_single:
                    continue
                sm = W.comprehension_sample(s)
                f, p, _ = m.encode_image(sm.image)
                comp.append((sm, f, p))
            groups: dict[int, list[int]] = {}                # pool indices by number of views
            for i, (_, f, _) in enumerate(comp):
                groups.setdefault(int(f.shape[0]), []).append(i)
            c["comprehension"], c["comprehension_buckets"] = comp, [groups[v] for v in sorted(groups)]
            bar.update(1)
        if "stories" in todo:
            stories = []
            for k in range(cfg.story_pool):
                sm = W.story_sample(_seed_of(cfg, "llm", 0, 60_000_000 + k))
                f = self._vit_features(torch.stack([image_to_unit(im) for im in sm.images()]))
                stories.append((sm, f))
            c["stories"] = stories
            bar.update(1)
        bar.close()

    def stage_unet(self):
        m, cfg = self.model, self.cfg
        d = m.detok
        d.resampler.train(); d.unet.train()
        g = torch.Generator(device="cpu")
        feats, lats = self.cache["feats"], self.cache["latents"]
        T = d.scheduler.config.num_train_timesteps

        def step(i):
            g.manual_seed(_seed_of(cfg, "unet", i, 0))
            idx = torch.randint(0, feats.shape[0], (cfg.unet_batch,), generator=g)
            f = pool_targets(feats[idx], m.config.target_pool, m.lvlm.num_img_tokens)
            loss = d.training_loss(f, None, generator=g, latents=lats[idx], timesteps=unet_timesteps(cfg, g, len(idx), T))
            return loss, None, None

        self._loop("unet", list(d.resampler.parameters()) + list(d.unet.parameters()), cfg.unet_steps, cfg.unet_lr or cfg.lr, step)
        d.eval().requires_grad_(False)

    # -- stage c data ----------------------------------------------------------
    def llm_examples(self, kind: str, step: int, n: int):
        """``n`` training sequences of one kind ("caption", "comprehension", "story") from the pools."""
        c = self.cache
        out = []
        for i in range(n):
            s = _seed_of(self.cfg, "llm", step, i)
            if kind == "caption":
                k = s % len(c["samples"])
                out.append(caption_pieces(c["samples"][k].caption, c["feats"][k]))
            elif kind == "comprehension":
                sm, feats, pos = c["comprehension"][self._comprehension_index(step, s)]
                out.append(comprehension_pieces(feats, pos, sm.question, sm.answer))
            elif random.Random(s).random() >= self.cfg.story_text_only:
                sm, feats = c["stories"][s % len(c["stories"])]
                out.append(story_pieces(sm.segments, feats))
            else:
                out.append(story_pieces(W.text_only_sample(s).segments, None))
        return [encode_pieces(self.model, p) for p in out]

    def _comprehension_index(self, step: int, s: int) -> int:
        """Pool index of a comprehension example of step ``step`` drawn with seed ``s``: from the whole pool,
        or (``comprehension_buckets``) from the step's bucket of pictures with one view count, the bucket
        drawn in proportion to its size."""
        if not self.cfg.comprehension_buckets:
            return s % len(self.cache["comprehension"])
        buckets = self.cache["comprehension_buckets"]
        bucket = random.Random(_seed_of(self.cfg, "llm", step, 7_777_777)).choices(buckets, [len(b) for b in buckets])[0]
        return bucket[s % len(bucket)]

    def stage_llm(self):
        m, cfg = self.model, self.cfg
        lv = m.lvlm
        lv.train()
        kinds = cfg.llm_mix                          # a tuple (TrainConfig.__post_init__)

        def step(i):
            kind = kinds[i % len(kinds)]
            n = cfg.llm_batch if kind != "comprehension" else cfg.comprehension_batch
            batch = collate(m, self.llm_examples(kind, i, n), self.device)
            out = lv(**batch)
            return out["loss"], float(out["lm_loss"].detach()), float(out["rec_loss"].detach())

        self._loop("llm", [p for p in lv.parameters()], cfg.llm_steps, cfg.llm_lr, step)
        lv.eval()

    # -- all -------------------------------------------------------------------
    def run_lane(self, lane: str | None = None):
        """Stage b ("detok": VAE, its calibration, adapter + UNet) or stage c ("llm"), with the caches it reads."""
        lane = lane or self.lane
        self.model.vit.eval().requires_grad_(False)          # trained (stage a) and frozen from here on
        if lane == "detok":
            self.stage_vae()
            if "unet" not in self.done:
                self.build_cache(llm=False)
                self.stage_unet()
        elif "llm" not in self.done:
            self.build_cache(detok=False)
            self.stage_llm()

    def _lane_files(self) -> list[Path]:
        return [f for f in (self.work / f"state-{k}.pt" for k in LANES) if f.exists()]

    def _run_lanes(self):
        """Stages b and c in two child processes of half the threads each (``python -c`` running
        :func:`_lane_main`, so no script of the caller is re-imported); their progress comes back over their
        stdout and is drawn here; their states are merged into ``state.pt`` when both have finished."""
        todo = [lane for lane, stages in LANES.items() if any(k not in self.done for k in stages)]
        if todo:
            _VIT_POOLS.clear()                               # the lanes do not need stage a's views
            threads = max(1, (self.cfg.threads or torch.get_num_threads()) // 2)
            spec = json.dumps(dict(cfg=asdict(self.cfg), threads=threads, t0=self.log.t0, parent=os.getpid()))
            totals = dict(vae=self.cfg.vae_steps, unet=self.cfg.unet_steps, llm=self.cfg.llm_steps)
            stages = [k for lane in todo for k in LANES[lane] if k in totals and k not in self.done]
            bars = {k: tqdm(total=totals[k], desc=f"stage {k}", position=i, disable=not self.progress,
                            dynamic_ncols=True, mininterval=1.0) for i, k in enumerate(stages)}
            msgs: queue.Queue = queue.Queue()
            procs: dict[str, subprocess.Popen] = {}
            try:
                for lane in todo:
                    procs[lane] = p = subprocess.Popen(
                        [sys.executable, "-c", f"from seedx_lab.train import _lane_main; _lane_main({lane!r})"],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
                    p.stdin.write(spec)
                    p.stdin.close()
                    threading.Thread(target=_read_lane, args=(lane, p.stdout, msgs), daemon=True).start()
                running = set(todo)
                while running:
                    lane, msg = msgs.get()
                    if msg[0] == "step":
                        _, stage, n, total, post = msg
                        bar = bars.get(stage)
                        if bar is not None:
                            bar.update(n - bar.n)
                            if post:
                                bar.set_postfix_str(post, refresh=False)
                    elif msg[0] == "done":
                        running.discard(lane)
                    elif msg[0] == "error":               # ("error", kind, message, traceback)
                        _, kind, text, tb = msg
                        if kind == "ValueError":          # a refused state or setting: say it plainly
                            raise ValueError(f"training lane '{lane}': {text}")
                        raise RuntimeError(f"training lane '{lane}' failed with {kind}: {text}\n\n{tb}")
                    elif lane in running:                 # ("eof",): it died without a word (killed, out of memory)
                        raise RuntimeError(f"training lane '{lane}' stopped with exit code {procs[lane].wait()}; "
                                           "run again to resume it")
            finally:
                for p in procs.values():
                    if p.poll() is None:
                        p.terminate()
                    p.wait()
                for bar in bars.values():
                    bar.close()
        for lane in LANES:                                   # merge: each lane owns its own parameters
            f = self.work / f"state-{lane}.pt"
            if f.exists():
                self._load_state(f, prefix=LANE_PARAMS[lane])
        missing = [k for k in STAGE_ORDER if k not in self.done]
        if missing:
            raise RuntimeError(f"the training lanes ended without finishing {', '.join(missing)}")
        self.resume_stage, self.resume_step, self.resume_opt = None, 0, None
        self._save_state(None, 0, None)
        for f in self._lane_files():
            f.unlink()

    def run(self) -> Path:
        t0 = time.time()
        self.stage_vit()
        if self.parallel:
            self._run_lanes()
        else:
            lanes = self._lane_files()
            if lanes:
                held = " and ".join(map(str, lanes)) + (" holds a lane" if len(lanes) == 1 else " hold the lanes")
                raise ValueError(f"{held} of a parallel run: resume it with parallel=True on the CPU, "
                                 "or start over with --fresh")
            for lane in LANES:
                self.run_lane(lane)
        self.model.eval()
        self.log.close()
        minutes = (time.time() - t0) / 60
        out = Path(self.cfg.out)
        log_text = (self.work / "train_log.csv").read_text()
        self.model.save(out, extra_files={"train_log.csv": log_text,
                                          "train_config.json": json.dumps(asdict(self.cfg), indent=2)})
        print(f"saved {out} after {minutes:.1f} min of training in this run")
        return out


_LANE_MARK = "\x1eseedx-lane "                           # starts each message line a lane writes to stdout


class _RemoteBar:
    """Stands in for a tqdm bar in a lane process: yields the steps and sends ``("step", stage, done, total,
    postfix)`` to the parent at most twice a second (and after the last step)."""

    def __init__(self, send, stage: str, start: int, total: int):
        self.send, self.stage, self.start, self.total = send, stage, start, total
        self.post, self.last = "", 0.0

    def __iter__(self):
        for step in range(self.start, self.total):
            yield step
            now = time.time()
            if now - self.last > 0.5 or step == self.total - 1:
                self.send("step", self.stage, step + 1, self.total, self.post)
                self.last = now

    def set_postfix(self, **kw):
        self.post = ", ".join(f"{k}={v}" for k, v in kw.items())


def _lane_main(lane: str):
    """Entry point of a lane process: reads ``{"cfg", "threads", "t0", "parent"}`` as JSON from stdin, runs the lane,
    and reports progress, the end or its error as marked JSON lines on stdout."""
    spec = json.loads(sys.stdin.read())
    threading.Thread(target=_exit_with_parent, args=(spec.get("parent", os.getppid()),), daemon=True).start()

    def send(*msg):
        print(_LANE_MARK + json.dumps(msg), flush=True)

    try:
        torch.set_num_threads(spec["threads"])
        Trainer(TrainConfig(**spec["cfg"]), progress=False, lane=lane, t0=spec["t0"], remote=send).run_lane()
        send("done")
    except BaseException as e:                               # the parent raises it, by kind and message
        send("error", type(e).__name__, str(e), traceback.format_exc())
        sys.exit(1)


def _exit_with_parent(parent: int, every: float = 0.5):
    """Watcher thread of a lane: end this process once its parent is gone (killed outright, no chance to
    stop its lanes), so no orphan keeps training and writing its state into the work directory."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


def _read_lane(lane: str, stream, out: queue.Queue):
    """Reader thread of the parent: a lane's marked lines to ``out`` as ``(lane, message)``, anything else it
    prints passed through; ``(lane, ("eof",))`` when its stdout closes."""
    for line in stream:
        if line.startswith(_LANE_MARK):
            out.put((lane, json.loads(line[len(_LANE_MARK):])))
        else:
            sys.stdout.write(line)
    out.put((lane, ("eof",)))


def train(cfg: TrainConfig | None = None, fresh: bool = False, progress: bool = True) -> Path:
    """Run (or resume) the three stages and write the checkpoint to ``cfg.out``."""
    return Trainer(cfg or TrainConfig(), fresh=fresh, progress=progress).run()


def read_log(path) -> list[dict]:
    """Rows of a ``train_log.csv`` with numbers as floats."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("step", "loss", "part1", "part2", "lr", "elapsed_s"):
            r[k] = float(r[k]) if r.get(k) not in (None, "") else None
    return rows
