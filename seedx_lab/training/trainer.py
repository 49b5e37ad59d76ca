"""Three-stage training of seedx-tiny on the shape world, as in the SEED-X paper, on a CPU.

Stage a — visual encoder, trained *supervised* (:mod:`seedx_lab.training.data` builds the views and
labels): each of its 256 output tokens reconstructs the pixels of its own cell of the view and names the
colour, shape and place of what covers it; small heads on the mean of the tokens name what sits at each of
the five positions; a head on the mean of each shape's cells names that shape. A contrastive loss against a
few hundred distinct captions says nothing about *where* things are; the per-cell target makes token i stand
for cell i, so the published 1-D pooling of four consecutive tokens keeps meaning. The heads are thrown away.

Stage b — de-tokenizer. The VAE learns to reconstruct world images (object pixels weigh more than the
background, plus an L1 term that keeps flat colours saturated), its latent scale is calibrated, then the
adapter + UNet learn to denoise latents conditioned on the *pooled* (64-token) features of the frozen ViT —
what the output resampler hands them at inference. Timesteps lean to the noisy end, where the layout is decided.

Stage c — LLM + input and output resamplers, with the LM loss (text and the ``<img>`` opener of each
generated image) and the regression loss on the 64 pooled features, over a mix of caption→image,
image→text (any-res tiles, SEED-X-I template), interleaved stories and text-only samples (``llm_mix``, the
task of each step in turn). The mix is a time budget: caption steps are short and draw the images,
comprehension steps are long and teach describing, story and text-only steps teach when ``<img>`` belongs.

Stages b and c both start from the finished ViT and never read each other, so on a CPU they run side by
side (``parallel``): two child processes ("lanes"), ``detok`` (stage b) and ``llm`` (stage c), of half the threads
each, because models this small use a second thread poorly (``benchmarks/lanes.py``). A lane's weights are what one
process with the lane's thread count would write, bit for bit (a test checks it).

Every stage's loop runs through ``accelerate`` (:mod:`seedx_lab.training.distributed`): in one process that changes
nothing; under ``accelerate launch --num_processes N`` each process trains on its share of every global batch and
DDP averages the gradients, following one process's run to float rounding.

Everything is seeded; progress bars show each stage; every stage logs to ``train_log.csv``; a resumable state
(``state.pt``; ``state-detok.pt`` and ``state-llm.pt`` while the lanes run, merged when both are done; all
written atomically) is kept in the work directory. ``docs/training.md`` explains the design,
``docs/experiments.md`` holds the runs that chose the defaults.
"""
from __future__ import annotations

import csv
import json
import math
import os
import random
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .. import validate as V
from ..files import atomic_write
from ..lvlm import pool_targets
from ..sequences import caption_pieces, collate, comprehension_pieces, encode_pieces, story_pieces
from ..shapeworld import world as W
from .config import LANE_PARAMS, LANES, STAGE_ORDER, TrainConfig, build_model
from . import data as D, detok_losses
from .distributed import Shard, StageModule, make_accelerator
from .data import ViTHeads, _seed_of, image_to_unit, unet_timesteps, vit_batch, vit_pool
from .workdir import MAY_CHANGE, WorkLock, config_changes, note, trim_log


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
        try:
            self.w.writerow(dict(stage=stage, step=step, loss=f"{loss:.5f}",
                                 part1="" if part1 is None else f"{part1:.5f}",
                                 part2="" if part2 is None else f"{part2:.5f}",
                                 lr="" if lr is None else f"{lr:.2e}", elapsed_s=f"{time.time() - self.t0:.1f}"))
            self.f.flush()
        except OSError as e:                  # a full disk: say which file, not a bare errno
            raise OSError(e.errno, e.strerror, str(self.path)) from None

    def close(self):
        self.f.close()


class _NoLog:
    """The log of a data-parallel process other than the main one: it writes nothing."""

    t0 = None

    def write(self, *args, **kw):
        pass

    def close(self):
        pass


def _atomic_save(obj, path: Path):
    """``torch.save`` that leaves the previous file intact (and no temporary) if interrupted.

    A failed write (full disk, read-only folder) is an ``OSError`` naming ``path``: torch's own message is a
    bare "basic_ios::clear: iostream error" or "file write failed"."""
    try:
        atomic_write(path, lambda p: torch.save(obj, p))
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OSError(f"could not write {path}: {first} (is the disk full or the folder read-only?)") from None


def _cosine(step, total, base, warmup=20):
    if step < warmup:
        return base * (step + 1) / warmup
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


# --------------------------------------------------------------------------- the trainer

class Trainer:
    """Runs the stages in order and keeps the resumable state. ``lane`` ("detok" or "llm") makes it the
    trainer of one lane process (see :data:`LANES`), with its own state file ``state-<lane>.pt``."""

    def __init__(self, cfg: TrainConfig, fresh: bool = False, progress: bool = True, lane: str | None = None,
                 t0: float | None = None, remote=None):
        if lane is not None and lane not in LANES:
            raise ValueError(f"lane must be one of {', '.join(LANES)}, got {lane!r}")
        self.started = time.time()                   # wall time of the run is counted from here
        self.cfg, self.lane, self.remote = cfg, lane, remote
        self.work = Path(cfg.work)
        self.lock = None
        self._threads_before = torch.get_num_threads()       # cfg.threads holds for the run only (see release)
        if lane is None:                 # before any work: where it goes, the device, and the folder to itself
            V.output_folder("work", cfg.work)
            V.output_folder("out", cfg.out)
            self.device = V.device("device", cfg.device)
        else:
            self.device = torch.device(cfg.device)
        # one process, or one of N under `accelerate launch` (data parallel; see training/distributed.py)
        self.accelerator = make_accelerator(self.device)
        self.shard = Shard(self.accelerator)
        if self.shard.world > 1:
            self.device = self.accelerator.device          # cuda:<local rank> on GPUs; the CPU stays the CPU
        if lane is None and self.shard.main:
            self.work.mkdir(parents=True, exist_ok=True)
            self.lock = WorkLock(self.work)      # a lane, or a non-main process, runs under the main one's lock
            if self.lock.stale:
                note(f"took over the lock of a run that ended without releasing it ({self.lock.stale})")
        self.state_path = self.work / ("state.pt" if lane is None else f"state-{lane}.pt")
        self.progress = progress and self.shard.main
        try:
            if cfg.threads and lane is None:
                torch.set_num_threads(cfg.threads)
            self.model = build_model(cfg.seed, self.device, cfg.num_img_tokens)
            self.done: list[str] = []
            self.resume_stage, self.resume_step, self.resume_opt = None, 0, None
            resumed = False
            if fresh:
                if self.shard.main:
                    for f in ("state.pt", *(f"state-{k}.pt" for k in LANES), "train_log.csv"):
                        (self.work / f).unlink(missing_ok=True)
            elif self.state_path.exists():
                self._load_state(self.state_path)
                resumed = True
            elif lane is not None:                       # a lane starts from the main state (the finished ViT)
                self._load_state(self.work / "state.pt")
                resumed = True
            if cfg.init is not None and not resumed:
                self._start_from(cfg.init, cfg.only)
            if lane is None and not fresh and self.shard.main:
                self._trim_log()
            self.log = CSVLog(self.work / "train_log.csv", t0=t0) if self.shard.main else _NoLog()
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        """Free the work folder and give the calling process its torch thread count back (also done at the end
        of :meth:`run`; the OS frees the folder when the process ends)."""
        torch.set_num_threads(self._threads_before)
        if self.lock is not None:
            self.lock.release()

    @property
    def parallel(self) -> bool:
        """Whether stages b and c run as two lane processes (``cfg.parallel`` on a CPU, in one process: data
        parallel processes run the stages in turn)."""
        return self.cfg.parallel and self.device.type == "cpu" and self.shard.world == 1

    # -- state ---------------------------------------------------------------
    def _save_state(self, stage, step, opt):
        if not self.shard.main:
            return
        _atomic_save(dict(config=asdict(self.cfg), done=self.done, stage=stage, step=step,
                          model=self.model.state_dict(), opt=opt.state_dict() if opt else None,
                          scaling_factor=float(self.model.detok.vae.config.scaling_factor)), self.state_path)

    def _read_state(self, path: Path) -> dict:
        # weights_only: a state holds tensors, numbers, strings, lists and dicts only (the config as a dict),
        # so nothing in a work folder can run code when it is read
        try:
            st = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # a torn write cannot happen (atomic), but a foreign or crafted file can
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"cannot resume from {path}: not a plain training state ({first}); "
                             "run with --fresh") from None
        missing = [k for k in ("model", "scaling_factor", "done", "stage", "step", "opt", "config") if k not in st] \
            if isinstance(st, dict) else ["model"]
        if missing:
            raise ValueError(f"cannot resume from {path}: missing entry {missing[0]!r} (written by a different "
                             "configuration?); run with --fresh")
        saved = dict(st["config"]) if isinstance(st["config"], dict) else {}
        # a state written before these fields existed was a 64-token run of all stages
        saved = {"num_img_tokens": 64, "init": None, "only": None, **saved}
        changed = config_changes(saved, asdict(self.cfg))
        if changed:
            raise ValueError(f"cannot resume from {path}: it was saved by a run with another configuration "
                             f"({'; '.join(changed)}). A resume may change only {', '.join(MAY_CHANGE)}: rerun "
                             "with the saved values, or start over with --fresh (the saved state is discarded)")
        return st

    def _trim_log(self):
        """Drop log rows written after the steps this run resumes from (``state.pt`` and any lane state), so
        that a resumed stage's rows are not repeated."""
        done, resume = set(self.done), {}
        if self.resume_stage is not None:
            resume[self.resume_stage] = self.resume_step
        for f in self._lane_files():
            try:
                st = self._read_state(f)
            except ValueError:           # the lane that reads it will refuse it, naming it: keep the log as it is
                return
            done |= set(st["done"])
            if st["stage"] is not None:
                resume[st["stage"]] = st["step"]
        trim_log(self.work / "train_log.csv", lambda stage, step: stage in done or step < resume.get(stage, 0))

    def _start_from(self, init: str, only: str):
        """Take every weight outside lane ``only`` from the saved model ``init`` (the lane's own stay freshly
        initialised from the seed), mark the other stages done and write that as the first state, which
        the lane processes and any resume start from. The two models must differ in nothing but
        ``num_img_tokens`` (which only the LLM lane's weights depend on)."""
        from ..loading import load

        src = load(init)
        if only != "llm" and src.config.num_img_tokens != self.cfg.num_img_tokens:
            raise ValueError(f"init {init} has {src.config.num_img_tokens} image tokens per block but this run "
                             f"asks for {self.cfg.num_img_tokens} and keeps its LLM lane: retrain only='llm'")
        a, b = (json.loads(json.dumps(m.config.to_dict())) for m in (src, self.model))    # tuples as lists
        for d in (a, b):
            d.pop("num_img_tokens")
            d["detok"]["vae"].pop("scaling_factor", None)          # calibrated by stage b, not a width
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            raise ValueError(f"init {init} is not a seedx-tiny this run can build on: its config differs in "
                             f"{', '.join(diff)}")
        prefix = LANE_PARAMS[only]
        sd = self.model.state_dict()
        sd.update({k: v.to(self.device) for k, v in src.state_dict().items() if not k.startswith(prefix)})
        self.model.load_state_dict(sd)
        if only != "detok":                                     # stage b's latent scale comes with its VAE
            self.model.detok.vae.register_to_config(scaling_factor=float(src.detok.vae.config.scaling_factor))
        self.done = [k for k in STAGE_ORDER if k not in LANES[only]]
        self._save_state(None, 0, None)

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

    def _loop(self, stage, modules, params, total, lr, step_fn):
        """Generic optimisation loop with cosine LR, logging, periodic atomic checkpoints, through
        ``accelerate``: ``modules`` (the ones that own ``params``) and the optimiser are prepared, so that under
        ``accelerate launch`` DDP averages the gradients of the processes' shares of each batch."""
        if stage in self.done:
            return
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        start = self._start(stage, opt)
        acc, shard = self.accelerator, self.shard
        if acc.ddp_handler is not None:      # only stage c has steps that leave parameters unused (text-only)
            acc.ddp_handler.find_unused_parameters = stage == "llm"
        model, opt = acc.prepare(StageModule(modules, step_fn), opt)
        torch.manual_seed(_seed_of(self.cfg, stage, start, 0))
        bar = self._bar(stage, total, start)
        for step in bar:
            for g in opt.param_groups:
                g["lr"] = _cosine(step, total, lr)
            loss, p1, p2 = model(step)
            opt.zero_grad(set_to_none=True)
            acc.backward(loss)
            acc.clip_grad_norm_(params, 1.0)
            opt.step()
            if step % self.cfg.log_every == 0 or step == total - 1:
                value = shard.average(loss.detach())                 # the global loss: the mean of the shares
                p1, p2 = (None if p is None else shard.average(p) for p in (p1, p2))
                self.log.write(stage, step, value, p1, p2, opt.param_groups[0]["lr"])
                bar.set_postfix(loss=f"{value:.4f}")
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

        share = self.shard.mean                     # each mean below over this process's rows (see distributed.py)
        rows = self.shard.rows(cfg.vit_batch, "vit_batch")

        def step(i):
            pix, cells, ccol, cshp, cols, shps = (t[rows].to(self.device) for t in vit_batch(cfg, i, base))
            feats = m.vit(pix)
            p_pix, p_col, p_shp, p_xy, col_logits, shp_logits = heads(feats)
            rec = share(F.mse_loss(p_pix, cells), cells.numel())
            local = share(F.cross_entropy(p_col.flatten(0, 1), ccol.flatten(), weight=colour_w), colour_w[ccol].sum()) + \
                share(F.cross_entropy(p_shp.flatten(0, 1), cshp.flatten(), weight=shape_w), shape_w[cshp].sum()) + \
                10 * share(F.mse_loss(p_xy, where.expand_as(p_xy)), p_xy.numel())
            cls = share(F.cross_entropy(col_logits.flatten(0, 1), cols.flatten(), ignore_index=-100), (cols != -100).sum()) + \
                share(F.cross_entropy(shp_logits.flatten(0, 1), shps.flatten(), ignore_index=-100), (shps != -100).sum()) + \
                cfg.vit_object_weight * share(heads.object_shape_loss(feats, cshp), heads.shapes_present(cshp))
            return 10 * rec + local + cls, rec.item(), (local + cls).item()

        self._loop("vit", [m.vit, heads], list(m.vit.parameters()) + list(heads.parameters()), cfg.vit_steps, cfg.lr, step)
        m.vit.eval().requires_grad_(False)

    def stage_vae(self):
        m, cfg = self.model, self.cfg
        vae = m.detok.vae
        if "vae_calibrated" not in self.done:
            vae.train()

            pool = self.caption_pool()["unit"]
            g = torch.Generator().manual_seed(cfg.seed)
            rows = self.shard.rows(cfg.vae_batch, "vae_batch")

            def step(i):
                g.manual_seed(_seed_of(cfg, "vae", i, 0))
                idx = torch.randint(0, pool.shape[0], (cfg.vae_batch,), generator=g)
                imgs = pool[idx].to(self.device) * 2 - 1
                flip = torch.rand(cfg.vae_batch, generator=g) < 0.5          # cheap augmentation
                imgs[flip] = imgs[flip].flip(-1)
                # the posterior's noise is drawn for the whole global batch, as one process draws it
                noise = detok_losses.posterior_noise(m.detok, imgs.shape, g)[rows]
                return detok_losses.vae_loss(m.detok, imgs[rows], noise=noise, foreground_weight=cfg.vae_foreground_weight,
                                             l1_weight=cfg.vae_l1_weight,
                                             share=self.shard.mean if self.shard.world > 1 else None), None, None

            self._loop("vae", [vae], list(vae.parameters()), cfg.vae_steps, cfg.lr, step)
            calib = torch.stack([image_to_unit(W.caption_image_sample(10_000_000 + k).image) for k in range(256)])
            vae.eval()
            detok_losses.calibrate_scaling_factor(m.detok, calib.to(self.device) * 2 - 1)
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
        from ..images import normalize
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

        rows = self.shard.rows(cfg.unet_batch, "unet_batch")

        def step(i):
            g.manual_seed(_seed_of(cfg, "unet", i, 0))
            idx = torch.randint(0, feats.shape[0], (cfg.unet_batch,), generator=g)
            f = pool_targets(feats[idx], m.config.target_pool, m.lvlm.num_out_features)
            loss = detok_losses.denoising_loss(d, f, None, generator=g, latents=lats[idx],
                                               timesteps=unet_timesteps(cfg, g, len(idx), T), rows=rows)
            return loss, None, None     # a mean over equal shares: DDP's average of the processes' means is the global one

        self._loop("unet", [d.resampler, d.unet], list(d.resampler.parameters()) + list(d.unet.parameters()),
                   cfg.unet_steps, cfg.unet_lr or cfg.lr, step)
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

        share = self.shard.mean
        rows = {n: self.shard.rows(n, name) for n, name in ((cfg.llm_batch, "llm_batch"),
                                                            (cfg.comprehension_batch, "comprehension_batch"))}

        def step(i):
            kind = kinds[i % len(kinds)]
            n = cfg.llm_batch if kind != "comprehension" else cfg.comprehension_batch
            batch = collate(m, self.llm_examples(kind, i, n)[rows[n]], self.device)
            out = lv(**batch)
            # shares of the global means: label tokens for the LM loss, regressed features for the other
            lm = share(out["lm_loss"], (batch["labels"][:, 1:] != -100).sum())
            rec = share(out["rec_loss"], out["rec"].numel() if "rec" in out else 0)
            loss = lv.lm_loss_scale * lm + lv.rec_loss_scale * rec                # as ContinuousLVLM.forward sums them
            return loss, float(lm.detach()), float(rec.detach())

        self._loop("llm", [lv], [p for p in lv.parameters()], cfg.llm_steps, cfg.llm_lr, step)
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
        """Stages b and c in two child processes of half the threads each; their progress comes back as
        messages on a ``multiprocessing`` connection and is drawn here; their states are merged into
        ``state.pt`` when both have finished.

        A lane is started as ``python -c`` running :func:`_lane_main` rather than by
        ``multiprocessing.Process``: the spawn start method re-imports the caller's ``__main__``, which would
        run again a user's script that calls ``train()`` without an ``if __name__ == "__main__"`` guard. The
        connection is one end of a socket pair the child inherits (``pass_fds``)."""
        todo = [lane for lane, stages in LANES.items() if any(k not in self.done for k in stages)]
        if todo:
            D._VIT_POOLS.clear()                               # the lanes do not need stage a's views
            threads = max(1, (self.cfg.threads or torch.get_num_threads()) // 2)
            spec = dict(cfg=asdict(self.cfg), threads=threads, t0=self.log.t0, parent=os.getpid())
            totals = dict(vae=self.cfg.vae_steps, unet=self.cfg.unet_steps, llm=self.cfg.llm_steps)
            stages = [k for lane in todo for k in LANES[lane] if k in totals and k not in self.done]
            bars = {k: tqdm(total=totals[k], desc=f"stage {k}", position=i, disable=not self.progress,
                            dynamic_ncols=True, mininterval=1.0) for i, k in enumerate(stages)}
            procs: dict[str, subprocess.Popen] = {}
            conns: dict[Connection, str] = {}
            try:
                for lane in todo:
                    mine, theirs = socket.socketpair()
                    with mine, theirs:
                        procs[lane] = subprocess.Popen(
                            [sys.executable, "-c", _LANE_BOOT.format(parent=os.getpid(), lane=lane, fd=theirs.fileno())],
                            pass_fds=(theirs.fileno(),))
                        conn = Connection(os.dup(mine.fileno()))
                    conn.send(spec)
                    conns[conn] = lane
                running = set(todo)
                while running:
                    lane, msg = _next_message(conns)
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
                for conn in conns:
                    conn.close()
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
        try:
            return self._run()
        finally:
            self.release()

    def _run(self) -> Path:
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
        threads = self.cfg.threads or torch.get_num_threads()
        out = Path(self.cfg.out)
        if not self.shard.main:                       # the main process writes the (identical) weights
            self.accelerator.wait_for_everyone()
            return out
        log_text = (self.work / "train_log.csv").read_text()
        self.model.save(out, extra_files={"train_log.csv": log_text,
                                          "train_config.json": json.dumps(asdict(self.cfg), indent=2)})
        wall = (time.time() - self.started) / 60
        procs = f"{self.shard.world} processes of " if self.shard.world > 1 else ""
        print(f"saved {out} after {minutes:.1f} min of training in this run; wall time {wall:.1f} min "
              f"from start to saved checkpoint ({procs}{threads} threads, {os.cpu_count()} CPUs visible)")
        self.accelerator.wait_for_everyone()
        return out


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


def _lane_main(lane: str, fd: int):
    """Entry point of a lane process: receives ``{"cfg", "threads", "t0", "parent"}`` on the connection of file
    descriptor ``fd``, runs the lane, and sends its progress, its end or its error back as tuples."""
    conn = Connection(fd)
    spec = conn.recv()

    def send(*msg):
        conn.send(msg)

    try:
        torch.set_num_threads(spec["threads"])
        Trainer(TrainConfig(**spec["cfg"]), progress=False, lane=lane, t0=spec["t0"], remote=send).run_lane()
        send("done")
    except BaseException as e:                               # the parent raises it, by kind and message
        send("error", type(e).__name__, str(e), traceback.format_exc())
        sys.exit(1)


# The program of a lane process. Its first act, before the seconds of importing torch and the models, is a
# watcher thread that ends the process once its parent is gone (killed outright, no chance to stop its lanes),
# so that no orphan keeps training and writing its state into the work directory.
_LANE_BOOT = """\
import os, threading, time
def _exit_with_parent(parent={parent}, every=0.5):
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)
threading.Thread(target=_exit_with_parent, daemon=True).start()
from seedx_lab.training.trainer import _lane_main
_lane_main({lane!r}, {fd})
"""


def _next_message(conns: dict) -> tuple[str, tuple]:
    """The next ``(lane, message)`` from the lanes' connections (``conns``: connection -> lane); a closed
    connection gives ``(lane, ("eof",))`` once and is dropped."""
    while conns:
        for conn in wait(list(conns)):
            lane = conns[conn]
            try:
                return lane, conn.recv()
            except (EOFError, OSError):
                del conns[conn]
                conn.close()
                return lane, ("eof",)
    raise RuntimeError("no training lane is left to hear from")


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
