"""Training of the Type-A arm, chameleon-tiny, on the same world, splits and examples as seedx-tiny.

Stage 1 — VQ tokenizer (:mod:`seedx_lab.typea.vq`): reconstruct world images through the codebook. The
images are seedx-tiny's caption pool (the first ``cache_size`` caption samples, as its VAE sees) and its
comprehension pool stretched to 64x64 (scenes of several objects and any aspect, which the tokenizer
must also encode since Chameleon reads fixed-size images), with random horizontal flips.

Stage 2 — the LLM, next-token cross-entropy only (no regression loss: an image *is* its code tokens),
over the same task mix as seedx-tiny's stage c (``llm_mix``): caption -> ``<img>`` codes ``</img>``,
``[INST] <img> codes </img> question [/INST]`` -> description, stories with pictures and text-only
samples. Every example is drawn with seedx-tiny's seeds (:func:`seedx_lab.training.data._seed_of` with
stage ``"llm"``), so at step ``i`` both arms read the same captions, questions and stories.

Seeded, resumable (``state.pt`` in the work directory, written atomically, read with
``torch.load(weights_only=True)``), progress bars, every stage logged to ``train_log.csv``.
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..shapeworld import world as W
from ..typea.model import ChameleonConfig, ChameleonTiny, build_tokenizer
from ..typea.sequences import caption_pieces, collate, comprehension_pieces, encode_pieces, story_pieces
from ..typea.vq import images_to_unit
from .config import LLM_TASKS, TrainConfig
from .data import _seed_of, image_to_unit
from .trainer import CSVLog, _atomic_save, _cosine

TYPEA_STAGES = ("vq", "llm")
_SEED_STAGE = {"vq": "vae", "llm": "llm"}       # the seedx-tiny stage whose seeds each stage shares
_SEEDX = TrainConfig()                          # seedx-tiny's defaults, shared where the arms must match


@dataclass
class TypeAConfig:
    out: str = "data/chameleon-tiny"
    work: str = "runs/chameleon-tiny"
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None
    grid: int = 4                          # code grid side: grid * grid code tokens per image
    codebook_size: int | None = None       # None: 256 for a 4x4 grid, 512 for 8x8 (VQConfig.for_grid)
    vq_steps: int = 600
    vq_batch: int = 32
    vq_lr: float = 1e-3
    vq_embed_dim: int | None = 8           # codebook width (None: the VQ latent width, 32)
    vq_restart_every: int = 50             # >0: every this many steps, codes unused since are moved onto batch latents
    cache_size: int = _SEEDX.cache_size
    comprehension_pool: int = _SEEDX.comprehension_pool
    comprehension_keep_single: float = _SEEDX.comprehension_keep_single
    story_pool: int = _SEEDX.story_pool
    story_text_only: float = _SEEDX.story_text_only
    llm_steps: int = _SEEDX.llm_steps
    llm_batch: int = _SEEDX.llm_batch
    comprehension_batch: int = _SEEDX.comprehension_batch
    llm_mix: tuple = _SEEDX.llm_mix
    llm_lr: float = _SEEDX.llm_lr
    ckpt_every: int = 200
    log_every: int = 10
    quick: bool = False

    def __post_init__(self):
        self.llm_mix = tuple(self.llm_mix)
        bad = [k for k in self.llm_mix if k not in LLM_TASKS]
        if not self.llm_mix or bad:
            raise ValueError(f"llm_mix must be a non-empty sequence of {', '.join(LLM_TASKS)}; got {list(self.llm_mix)}")
        if self.grid not in (1, 2, 4, 8, 16, 32, 64):
            raise ValueError(f"grid must be a power of two dividing 64 (e.g. 4 or 8), got {self.grid!r}")
        for name in ("vq_steps", "vq_batch", "llm_steps", "llm_batch", "comprehension_batch", "cache_size",
                     "comprehension_pool", "story_pool", "ckpt_every", "log_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        r = self.vq_restart_every
        if isinstance(r, bool) or not isinstance(r, int) or r < 0 or (r and self.ckpt_every % r):
            # a resumed run restarts its usage count at a checkpoint, so windows must end on checkpoints
            raise ValueError(f"vq_restart_every must be 0 or a non-negative int dividing ckpt_every="
                             f"{self.ckpt_every}, got {r!r}")

    @classmethod
    def quick_run(cls, **kw) -> "TypeAConfig":
        """A few minutes on a CPU: the same code path, tiny step counts and pools (quality is low)."""
        base = dict(vq_steps=60, vq_batch=16, cache_size=128, comprehension_pool=32, story_pool=32, llm_steps=90,
                    llm_batch=8, comprehension_batch=4, ckpt_every=50, quick=True,
                    out="runs/typea-quick/model", work="runs/typea-quick")
        base.update(kw)
        return cls(**base)


class TypeATrainer:
    """Runs (or resumes) the two stages of chameleon-tiny; :meth:`run` writes the checkpoint."""

    def __init__(self, cfg: TypeAConfig, fresh: bool = False, progress: bool = True):
        self.cfg, self.progress = cfg, progress
        self.device = torch.device(cfg.device)
        self._threads_before = torch.get_num_threads()       # cfg.threads holds for run() only
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.work = Path(cfg.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_path = self.work / "state.pt"
        if fresh:
            for f in (self.state_path, self.work / "train_log.csv"):
                f.unlink(missing_ok=True)
        torch.manual_seed(cfg.seed)
        vq_kw = dict(vq_embed_dim=cfg.vq_embed_dim)
        tok = build_tokenizer(ChameleonConfig.tiny(1, cfg.grid, cfg.codebook_size, **vq_kw).vq.codebook_size)
        self.model = ChameleonTiny(ChameleonConfig.tiny(len(tok), cfg.grid, cfg.codebook_size, **vq_kw), tok,
                                   device=self.device)
        self.done: list[str] = []
        self.resume_stage, self.resume_step, self.resume_opt = None, 0, None
        if self.state_path.exists():
            self._load_state()
        self.log = CSVLog(self.work / "train_log.csv")

    # -- state ---------------------------------------------------------------
    def _save_state(self, stage, step, opt):
        _atomic_save(dict(config=asdict(self.cfg), done=list(self.done), stage=stage, step=step,
                          model=self.model.state_dict(), opt=opt.state_dict() if opt else None), self.state_path)

    def _load_state(self):
        p = self.state_path
        try:
            st = torch.load(p, map_location=self.device, weights_only=True)
        except Exception as e:
            raise ValueError(f"cannot resume from {p}: {str(e).splitlines()[0]}; run with --fresh") from None
        if not isinstance(st, dict) or any(k not in st for k in ("config", "done", "stage", "step", "model", "opt")):
            raise ValueError(f"cannot resume from {p}: not a Type-A training state; run with --fresh")
        saved = st["config"]
        for k in ("grid", "codebook_size", "seed", "vq_embed_dim", "vq_restart_every"):
            if saved.get(k) != getattr(self.cfg, k):
                raise ValueError(f"cannot resume from {p}: it was trained with {k}={saved.get(k)!r}, this run asks "
                                 f"for {k}={getattr(self.cfg, k)!r}; run with --fresh or another --work")
        try:
            self.model.load_state_dict(st["model"])
        except RuntimeError as e:
            raise ValueError(f"cannot resume from {p}: {str(e).splitlines()[0]}; run with --fresh") from None
        self.done = list(st["done"])
        self.resume_stage, self.resume_step, self.resume_opt = st["stage"], st["step"], st["opt"]

    # -- loop ----------------------------------------------------------------
    def _loop(self, stage, params, total, lr, step_fn):
        """AdamW with warm-up + cosine LR, clipped gradients, a log row every ``log_every`` steps and an
        atomic state every ``ckpt_every`` steps; resumes mid-stage from the saved optimiser state."""
        if stage in self.done:
            return
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        start = 0
        if self.resume_stage == stage and self.resume_opt is not None:
            opt.load_state_dict(self.resume_opt)
            start = self.resume_step
        torch.manual_seed(_seed_of(self.cfg, _SEED_STAGE[stage], start, 0))
        bar = tqdm(range(start, total), desc=f"type-a {stage}", initial=start, total=total,
                   disable=not self.progress, dynamic_ncols=True, mininterval=1.0)
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
        self.resume_stage, self.resume_opt = None, None
        self._save_state(None, 0, None)

    # -- pools ---------------------------------------------------------------
    def pools(self) -> dict:
        """The samples both arms train on, rendered once: seedx-tiny's caption pool (``cache_size`` square
        images), its comprehension pool (same seeds and one-object filter; stretched to 64x64) and its
        story pool; pixels ``[N, 3, 64, 64]`` in [0, 1]."""
        if getattr(self, "_pools", None) is not None:
            return self._pools
        cfg = self.cfg
        captions = [W.caption_image_sample(k) for k in tqdm(range(cfg.cache_size), desc="caption pool",
                                                            disable=not self.progress, mininterval=1.0)]
        comp, k = [], 0
        while len(comp) < cfg.comprehension_pool:               # the selection rule of Trainer.build_cache
            s = _seed_of(cfg, "llm", 0, 50_000_000 + k)
            k += 1
            if len(W.sample_scene(s, "train", *W.aspect_for_seed(s)).objects) == 1 and \
                    random.Random(s).random() >= cfg.comprehension_keep_single:
                continue
            comp.append(W.comprehension_sample(s))
        stories = [W.story_sample(_seed_of(cfg, "llm", 0, 60_000_000 + k)) for k in range(cfg.story_pool)]
        self._pools = dict(captions=captions, caption_unit=torch.stack([image_to_unit(sm.image) for sm in captions]),
                           comprehension=comp, comprehension_unit=images_to_unit([sm.image for sm in comp]),
                           stories=stories, story_units=[torch.stack([image_to_unit(im) for im in sm.images()])
                                                         for sm in stories])
        return self._pools

    @torch.no_grad()
    def code_cache(self) -> dict:
        """Codes ``[N, grid, grid]`` of every pool image under the trained tokenizer."""
        if getattr(self, "_codes", None) is None:
            p, vq = self.pools(), self.model.vq.eval()

            def enc(unit):
                return torch.cat([vq.encode(unit[k:k + 128].to(self.device)) for k in range(0, len(unit), 128)]).cpu()

            self._codes = dict(captions=enc(p["caption_unit"]), comprehension=enc(p["comprehension_unit"]),
                               stories=[enc(u) for u in p["story_units"]])
        return self._codes

    # -- stages --------------------------------------------------------------
    def stage_vq(self):
        cfg, vq = self.cfg, self.model.vq
        if "vq" in self.done:
            vq.eval().requires_grad_(False)
            return
        p = self.pools()
        data = torch.cat([p["caption_unit"], p["comprehension_unit"]])
        g = torch.Generator()
        vq.train()
        usage = torch.zeros(vq.config.codebook_size, dtype=torch.long)
        self.restarted = 0

        def step(i):
            g.manual_seed(_seed_of(cfg, "vae", i, 0))
            idx = torch.randint(0, data.shape[0], (cfg.vq_batch,), generator=g)
            x = data[idx].clone()
            flip = torch.rand(cfg.vq_batch, generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
            total, rec, commit, codes, latents = vq.loss_and_codes(x.to(self.device))
            usage.add_(torch.bincount(codes.cpu(), minlength=usage.numel()))
            # dead-code restart (not in the last fifth, so the codebook settles before the LLM reads it);
            # it edits the codebook after this step's loss, before the optimiser step uses the gradients
            if cfg.vq_restart_every and (i + 1) % cfg.vq_restart_every == 0:
                if i < 0.8 * cfg.vq_steps:
                    self.restarted += vq.restart_codes((usage == 0).nonzero().flatten(), latents, generator=g)
                usage.zero_()
            return total, float(rec.detach()), float(commit.detach())

        self._loop("vq", list(vq.parameters()), cfg.vq_steps, cfg.vq_lr, step)
        vq.eval().requires_grad_(False)

    def llm_examples(self, kind: str, step: int, n: int):
        """``n`` training sequences of one kind, drawn with seedx-tiny's seeds (``Trainer.llm_examples``)."""
        p, c, cfg = self.pools(), self.code_cache(), self.cfg
        out = []
        for i in range(n):
            s = _seed_of(cfg, "llm", step, i)
            if kind == "caption":
                k = s % len(p["captions"])
                out.append(caption_pieces(p["captions"][k].caption, c["captions"][k]))
            elif kind == "comprehension":
                k = s % len(p["comprehension"])
                sm = p["comprehension"][k]
                out.append(comprehension_pieces(c["comprehension"][k], sm.question, sm.answer))
            elif random.Random(s).random() >= cfg.story_text_only:
                k = s % len(p["stories"])
                out.append(story_pieces(p["stories"][k].segments, c["stories"][k]))
            else:
                out.append(story_pieces(W.text_only_sample(s).segments))
        return [encode_pieces(self.model, x) for x in out]

    def stage_llm(self):
        cfg, llm = self.cfg, self.model.llm
        if "llm" in self.done:
            llm.eval()
            return
        self.code_cache()
        llm.train()

        def step(i):
            kind = cfg.llm_mix[i % len(cfg.llm_mix)]
            n = cfg.comprehension_batch if kind == "comprehension" else cfg.llm_batch
            out = llm(**collate(self.model, self.llm_examples(kind, i, n), self.device), use_cache=False)
            return out.loss, float(out.loss.detach()), None

        self._loop("llm", list(llm.parameters()), cfg.llm_steps, cfg.llm_lr, step)
        llm.eval()

    def run(self) -> Path:
        try:
            return self._run()
        finally:
            torch.set_num_threads(self._threads_before)     # the calling process goes on (notebook, tests)

    def _run(self) -> Path:
        t0 = time.time()
        self.stage_vq()
        self.stage_llm()
        self.model.eval()
        self.log.close()
        out = Path(self.cfg.out)
        self.model.save(out, extra_files={"train_log.csv": (self.work / "train_log.csv").read_text(),
                                          "train_config.json": json.dumps(asdict(self.cfg), indent=2)})
        print(f"saved {out} after {(time.time() - t0) / 60:.1f} min of training in this run")
        return out


def train_typea(cfg: TypeAConfig | None = None, fresh: bool = False, progress: bool = True) -> Path:
    """Run (or resume) both stages and write the chameleon-tiny checkpoint to ``cfg.out``."""
    return TypeATrainer(cfg or TypeAConfig(), fresh=fresh, progress=progress).run()
