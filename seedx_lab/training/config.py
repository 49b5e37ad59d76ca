"""Training configuration of seedx-tiny, and the untrained model it starts from."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from .. import tokens as T
from .. import validate as V
from ..model import SeedX, SeedXConfig
from ..shapeworld import world as W

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
    # batch of a comprehension step (its sequences are long: up to five views of 64 tokens)
    comprehension_batch: int = 24
    # each comprehension batch holds pictures of one view count (2-5 views), so a batch is not padded to the
    # longest picture in it: fewer tokens per step, the same pictures in the same proportions
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
    # second thread poorly (benchmarks/lanes.py measures it). False, or a device
    # other than the CPU: one stage after another in this process
    parallel: bool = True
    quick: bool = False
    # image tokens per <img> block (SeedXConfig.num_img_tokens): the input resampler's queries and the LLM's
    # block length; the output resampler still hands the de-tokenizer 64 features
    num_img_tokens: int = 64
    # retrain one lane only: ``init`` is a saved seedx-lab model (e.g. data/seedx-tiny) whose weights outside
    # that lane are kept as they are (stage a's ViT always; stage b's VAE, its latent scale, adapter + UNet
    # when ``only="llm"``), ``only`` the lane trained afresh ("llm": input resampler, LLM, output resampler;
    # "detok"). Both or neither
    init: str | None = None
    only: str | None = None

    def __post_init__(self):
        self.llm_mix = tuple(self.llm_mix)
        V.seed("seed", self.seed, allow_none=False)
        V.positive_int("threads", self.threads, high=4096, allow_none=True)
        self.out, self.work = (str(V.path_like(k, getattr(self, k))) for k in ("out", "work"))   # a JSON-able config
        for name in ("vit_steps", "vit_batch", "vae_steps", "vae_batch", "cache_size", "comprehension_pool",
                     "story_pool", "unet_steps", "unet_batch", "llm_steps", "llm_batch", "comprehension_batch",
                     "ckpt_every", "log_every", "vit_pool"):
            v = getattr(self, name)
            low = 0 if name == "vit_pool" else 1                   # vit_pool 0: render every batch afresh
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        for name in ("lr", "llm_lr", "unet_lr", "vit_shape_weight", "vit_colour_weight", "vae_foreground_weight"):
            v = getattr(self, name)
            if v is None and name == "unet_lr":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not 0.0 <= self.story_text_only <= 1.0:
            raise ValueError(f"story_text_only must be in [0, 1], got {self.story_text_only}")
        if not 0.0 < self.comprehension_keep_single <= 1.0:
            raise ValueError(f"comprehension_keep_single must be in (0, 1], got {self.comprehension_keep_single}")
        from ..model import check_num_img_tokens

        check_num_img_tokens(self.num_img_tokens)
        if (self.init is None) != (self.only is None):
            raise ValueError("init and only go together: init names the model whose other weights are kept, "
                             f"only the lane retrained from scratch (got init={self.init!r}, only={self.only!r})")
        if self.only is not None:
            V.choice("only", self.only, tuple(LANES))
            self.init = str(V.path_like("init", self.init))
        bad = [k for k in self.llm_mix if k not in LLM_TASKS]
        if not self.llm_mix or bad:
            raise ValueError(f"llm_mix must be a non-empty sequence of {', '.join(LLM_TASKS)}; got {list(self.llm_mix)}")

    @classmethod
    def quick_run(cls, **kw) -> "TrainConfig":
        """The same code path with far fewer steps and smaller pools: meant to show every loss falling
        (notebook 08 checks it), not to draw well."""
        base = dict(vit_steps=24, vit_batch=16, vit_pool=0, vae_steps=16, vae_batch=16, cache_size=64, comprehension_pool=24,
                    story_pool=24, unet_steps=30, unet_batch=16, llm_steps=60, llm_batch=8, comprehension_batch=4,
                    ckpt_every=50, quick=True,
                    out="runs/seedx-quick/model", work="runs/seedx-quick")
        base.update(kw)
        return cls(**base)


def build_tokenizer():
    return T.build_tokenizer(W.vocabulary())


def build_model(seed: int = 0, device="cpu", num_img_tokens: int = 64) -> SeedX:
    """The untrained seedx-tiny (``num_img_tokens`` image tokens per block), initialised from ``seed``."""
    tok = build_tokenizer()
    torch.manual_seed(seed)
    cfg = replace(SeedXConfig.tiny(vocab_size=len(tok)), num_img_tokens=num_img_tokens)     # checked on the way
    return SeedX(cfg, tok, device=device)
