"""The SEED-X de-tokenizer: 64 ViT-like features -> an SDXL image.

SEED-X turns the output resampler's 64 features [B, 64, 4096] back into
pixels with a Stable Diffusion XL UNet whose text encoders are replaced by a
Perceiver resampler (``ResamplerXLV2`` inside ``SDXLAdapter`` in the
published code):

    features [B, N, 4096]
      -> ResamplerXLV2 (64 latents, 4 Perceiver layers, width 1024)
           encoder_hidden_states [B, 64, 768 + 1280 = 2048]   (SDXL's two CLIP widths)
           text_embeds           [B, 1280]                    (SDXL's pooled CLIP-G)
      + time_ids [B, 6] = (orig_h, orig_w, crop_top, crop_left, target_h, target_w)
      -> SDXL UNet, EulerDiscreteScheduler, 50 steps, guidance 7.5, 1024 x 1024
      -> AutoencoderKL decode (latents / scaling_factor) -> image

``Detokenizer`` = the published ``SDXLAdapter`` (``resampler`` + ``unet``)
plus the ``vae`` and the ``scheduler`` it is run with.  The unconditional
branch of classifier-free guidance is the same resampler fed "null"
features: SEED-X uses the ViT features of an all-zero image tensor; here the
default is all-zero features (pass ``negative_features`` to change it), and
the denoising loss can drop the condition to zeros (``cond_drop_prob``) so the
tiny model learns that branch.

``Detokenizer.sample`` is a diffusers-style loop over ``scheduler.timesteps``
(:meth:`~Detokenizer.prepare_conditions`, :meth:`~Detokenizer.prepare_latents`,
then per step :meth:`~Detokenizer.predict_noise`, ``scheduler.step`` and the
step-end callbacks); the training losses are in
:mod:`seedx_lab.training.detok_losses`.

Facts read from AILab-CVC/SEED-X (commit 24c865b):

* ``configs/sdxl_adapter/sdxl_qwen_vit_resampler_l4_q64_pretrain_no_normalize.yaml``:
  ResamplerXLV2 dim 1024, depth 4, dim_head 64, heads 16, num_queries 64,
  embedding_dim 4096, output1_dim 768, output2_dim 1280, ff_mult 4,
  normalize False; weights ``pretrained/seed_detokenizer/first_stage/pytorch_model.bin``.
* ``src/models/detokenizer/adapter_modules.py``: ``SDXLAdapter`` holds
  ``self.unet`` and ``self.resampler`` and loads the checkpoint into itself
  with ``load_state_dict(strict=False)``, so its keys are ``resampler.*``
  (and ``unet.*`` for UNet weights that were trained; which UNet weights
  the .bin holds could not be checked without the file).  ``generate``:
  guidance 7.5, 1024 x 1024; the eval scripts pass 50 steps and use
  ``EulerDiscreteScheduler`` / ``AutoencoderKL`` / ``UNet2DConditionModel``
  from ``stable-diffusion-xl-base-1.0``.
* ``src/models/detokenizer/resampler.py``: the module structure below.

state_dict keys of ``Detokenizer.resampler`` (= checkpoint keys after the
``resampler.`` prefix), verified against ``ResamplerXLV2`` in that file;
L = depth, D = dim, I = heads * dim_head, Q = num_queries:

    latents                                   [1, Q, D]
    proj_in.weight / .bias                    [D, embedding_dim] / [D]
    layers.{l}.0.norm1.weight / .bias         [D]    LayerNorm on the inputs
    layers.{l}.0.norm2.weight / .bias         [D]    LayerNorm on the latents
    layers.{l}.0.to_q.weight                  [I, D]   (no bias)
    layers.{l}.0.to_kv.weight                 [2I, D]  (no bias; rows k | v)
    layers.{l}.0.to_out.weight                [D, I]   (no bias)
    layers.{l}.1.0.weight / .bias             [D]    feed-forward LayerNorm
    layers.{l}.1.1.weight                     [ff_mult*D, D]  (no bias)
    layers.{l}.1.3.weight                     [D, ff_mult*D]  (no bias; .2 is GELU)
    norm_out.weight / .bias                   [D]
    unet_proj_1.weight / .bias                [output1_dim, D] / [output1_dim]
    unet_proj_2.weight / .bias                [output2_dim, D] / [output2_dim]
    unet_attnpool.positional_embedding        [Q + 1, D]
    unet_attnpool.{q,k,v}_proj.weight / .bias [D, D] / [D]
    unet_attnpool.c_proj.weight / .bias       [output2_dim, D] / [output2_dim]

``unet.*`` keys are diffusers' ``UNet2DConditionModel`` names.  The SDXL base
configs (UNet, VAE, scheduler) are the ``stable-diffusion-xl-base-1.0``
``config.json`` values.

Hook points (``nn.Identity``, no parameters, no state_dict keys):
``resampler.layers.{l}.0.hook_attn`` sees [B, heads, Q, N + Q] (latents
attend to the inputs *and* to themselves: keys = concat(inputs, latents)),
``resampler.unet_attnpool.hook_attn`` sees [B, heads, 1, Q + 1] (the pooled
token's weights over [mean, latents...]), ``resampler.hook_latents`` sees
the normed latents [B, Q, D].
"""

from __future__ import annotations

import math
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

__all__ = [
    "SDXL_UNET_CONFIG",
    "SDXL_VAE_CONFIG",
    "SDXL_SCHEDULER_CONFIG",
    "DetokenizerConfig",
    "PerceiverAttention",
    "AttentionPool",
    "ResamplerXLV2",
    "Detokenizer",
]

# -----------------------------------------------------------------------------
# SDXL base 1.0 component configs (values of its unet/vae/scheduler config.json)

SDXL_UNET_CONFIG = dict(
    sample_size=128,  # latent side: 1024 / 8
    in_channels=4,
    out_channels=4,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20),  # diffusers' name; these are head *counts* (head width 64)
    transformer_layers_per_block=(1, 2, 10),
    cross_attention_dim=2048,  # 768 (CLIP-L) + 1280 (OpenCLIP-G)
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 1280 pooled + 6 time ids * 256
    norm_num_groups=32,
    norm_eps=1e-5,
    act_fn="silu",
    flip_sin_to_cos=True,
    freq_shift=0,
    downsample_padding=1,
)

SDXL_VAE_CONFIG = dict(
    sample_size=1024,
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),  # 3 downsamples: x8
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    act_fn="silu",
    scaling_factor=0.13025,
    force_upcast=True,
)

SDXL_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    interpolation_type="linear",
    use_karras_sigmas=False,
    timestep_spacing="leading",
    steps_offset=1,
)

#: seedx-tiny's schedule: SDXL's betas rescaled to a zero terminal SNR, "trailing" timesteps and
#: v-prediction. On 16 x 16 latents SDXL's own schedule keeps sqrt(abar_T) = 0.068 of the image in its
#: noisiest sample, and averaged over the 1,024 latent values that is enough for the UNet to read the
#: layout and colours from the noise instead of the condition, which inference (pure noise) then
#: lacks (docs/experiments.md has the measurement).
TINY_SCHEDULER_CONFIG = dict(SDXL_SCHEDULER_CONFIG, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                             prediction_type="v_prediction")

NUM_TIME_IDS = 6  # (orig_h, orig_w, crop_top, crop_left, target_h, target_w)

#: what a step callback can be given after each denoising step, each [B, C, h, w]: the latents after the
#: step, the (guided) UNet output and the scheduler's prediction of the clean latents
STEP_TENSORS = ("latents", "noise_pred", "pred_original_sample")


# -----------------------------------------------------------------------------
# config


@dataclass
class DetokenizerConfig:
    """Widths of the adapter resampler plus the diffusers component configs.

    The resampler's names follow ``ResamplerXLV2``: ``embedding_dim`` is the
    input feature width, ``output1_dim + output2_dim`` the UNet's
    ``cross_attention_dim`` and ``output2_dim`` the pooled ``text_embeds`` width.
    """

    # adapter resampler (ResamplerXLV2)
    embedding_dim: int = 4096  # width of the incoming features (the output resampler's)
    dim: int = 1024
    depth: int = 4
    dim_head: int = 64
    heads: int = 16
    num_queries: int = 64
    output1_dim: int = 768
    output2_dim: int = 1280
    ff_mult: int = 4
    normalize: bool = False  # F.normalize(x) on the input, over dim 1 as published
    # diffusion components
    unet: dict = field(default_factory=lambda: dict(SDXL_UNET_CONFIG))
    vae: dict = field(default_factory=lambda: dict(SDXL_VAE_CONFIG))
    scheduler: dict = field(default_factory=lambda: dict(SDXL_SCHEDULER_CONFIG))
    # sampling / training defaults
    image_size: int = 1024
    num_inference_steps: int = 50
    guidance_scale: float = 7.5
    cond_drop_prob: float = 0.0  # denoising loss: chance to replace a sample's features with zeros

    def __post_init__(self):
        for name in ("embedding_dim", "dim", "depth", "dim_head", "heads", "num_queries",
                     "output1_dim", "output2_dim", "ff_mult", "image_size", "num_inference_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"DetokenizerConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads}) for the attention pool")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        u, v = self.unet, self.vae
        if u.get("cross_attention_dim") != self.cross_attention_dim:
            raise ValueError(
                f"unet cross_attention_dim ({u.get('cross_attention_dim')}) must equal "
                f"output1_dim + output2_dim ({self.cross_attention_dim})"
            )
        if u.get("addition_embed_type") != "text_time":
            raise ValueError(f"unet addition_embed_type must be 'text_time' (SDXL), got {u.get('addition_embed_type')!r}")
        want = self.pooled_dim + NUM_TIME_IDS * u.get("addition_time_embed_dim", 0)
        if u.get("projection_class_embeddings_input_dim") != want:
            raise ValueError(
                f"unet projection_class_embeddings_input_dim ({u.get('projection_class_embeddings_input_dim')}) must be "
                f"pooled_dim + 6 * addition_time_embed_dim = {want}"
            )
        if u.get("in_channels", 4) != v.get("latent_channels", 4) or u.get("out_channels", 4) != v.get("latent_channels", 4):
            raise ValueError(
                f"unet in/out channels ({u.get('in_channels', 4)}/{u.get('out_channels', 4)}) must equal "
                f"vae latent_channels ({v.get('latent_channels', 4)})"
            )
        if self.image_size % self.vae_scale_factor != 0:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by the VAE factor {self.vae_scale_factor}")

    @property
    def cross_attention_dim(self) -> int:
        return self.output1_dim + self.output2_dim

    @property
    def pooled_dim(self) -> int:
        return self.output2_dim

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae["block_out_channels"]) - 1)

    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale_factor

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DetokenizerConfig":
        return cls(**d)

    @classmethod
    def published(cls) -> "DetokenizerConfig":
        """SEED-X: ResamplerXLV2 (1024 wide, 4 layers, 64 queries, 4096 in) + SDXL base."""
        return cls()

    @classmethod
    def tiny(cls, embedding_dim: int = 64) -> "DetokenizerConfig":
        """seedx-tiny: 64 queries over ``embedding_dim``-wide features, 64 x 64 RGB
        images, a x4 VAE (16 x 16 x 4 latents) and a two-level UNet."""
        unet = dict(
            SDXL_UNET_CONFIG,
            sample_size=16,
            # as SDXL: no attention at the full-resolution level, cross-attention below it. Attention at
            # 16 x 16 cost a third of every training step and, at equal CPU time, the UNet without it
            # drew more pictures right (it gets 1.5x the steps)
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            attention_head_dim=(2, 4),  # head counts, head width 16
            transformer_layers_per_block=(1, 1),
            cross_attention_dim=64,
            addition_embed_type_num_heads=4,
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=32 + NUM_TIME_IDS * 8,
            norm_num_groups=8,
        )
        vae = dict(
            SDXL_VAE_CONFIG,
            sample_size=64,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(16, 32, 32),  # 2 downsamples: x4; narrow, so it trains in minutes on a CPU
            layers_per_block=1,
            norm_num_groups=8,
            mid_block_add_attention=False,
            scaling_factor=1.0,  # set by training.detok_losses.calibrate_scaling_factor after VAE training
            force_upcast=False,
        )
        return cls(
            embedding_dim=embedding_dim, dim=64, depth=2, dim_head=16, heads=4, num_queries=64,
            output1_dim=32, output2_dim=32, ff_mult=4,
            unet=unet, vae=vae, scheduler=dict(TINY_SCHEDULER_CONFIG),
            image_size=64, num_inference_steps=25, guidance_scale=3.0, cond_drop_prob=0.1,
        )


# -----------------------------------------------------------------------------
# the adapter resampler


def feed_forward(dim: int, mult: int, device=None, dtype=None) -> nn.Sequential:
    """Pre-norm MLP [.., dim] -> [.., dim]; indices 0/1/3 carry the published keys."""
    return nn.Sequential(
        nn.LayerNorm(dim, device=device, dtype=dtype),
        nn.Linear(dim, dim * mult, bias=False, device=device, dtype=dtype),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False, device=device, dtype=dtype),
    )


class PerceiverAttention(nn.Module):
    """Latents [B, Q, D] read inputs [B, N, D]; keys/values = concat(inputs, latents).

    Returns the update [B, Q, D] (the caller adds the residual).
    """

    def __init__(self, dim: int, dim_head: int, heads: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        inner = dim_head * heads
        self.heads, self.dim_head = heads, dim_head
        self.norm1 = nn.LayerNorm(dim, **kw)  # inputs
        self.norm2 = nn.LayerNorm(dim, **kw)  # latents
        self.to_q = nn.Linear(dim, inner, bias=False, **kw)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False, **kw)
        self.to_out = nn.Linear(inner, dim, bias=False, **kw)
        self.hook_attn = nn.Identity()  # [B, heads, Q, N + Q]

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        B, Q, _ = latents.shape
        H, Dh = self.heads, self.dim_head
        x = self.norm1(x)  # [B, N, D]
        latents = self.norm2(latents)  # [B, Q, D]

        q = self.to_q(latents)  # [B, Q, I]
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # [B, N+Q, I] each
        q, k, v = (t.reshape(B, -1, H, Dh).transpose(1, 2) for t in (q, k, v))  # [B, H, *, Dh]

        # 1/sqrt(Dh) split as Dh**-0.25 on q and on k (as published: keeps fp16 products small)
        s = Dh**-0.25
        scores = (q * s) @ (k * s).transpose(-2, -1)  # [B, H, Q, N+Q]
        attn = scores.float().softmax(dim=-1).to(q.dtype)
        attn = self.hook_attn(attn)

        out = attn @ v  # [B, H, Q, Dh]
        out = out.transpose(1, 2).reshape(B, Q, H * Dh)  # [B, Q, I]
        return self.to_out(out)  # [B, Q, D]


class AttentionPool(nn.Module):
    """CLIP-style attention pooling: latents [B, Q, D] -> one vector [B, out_dim].

    A mean token is prepended, learned positions are added and the mean
    token's multi-head self-attention output (projected by ``c_proj``) is the
    pooled embedding.  Only that one query row is computed; the result is the
    same as running full self-attention and keeping token 0.
    """

    def __init__(self, seq_len: int, dim: int, heads: int, out_dim: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.heads = heads
        self.positional_embedding = nn.Parameter(torch.randn(seq_len + 1, dim, **kw) / dim**0.5)
        self.k_proj = nn.Linear(dim, dim, **kw)
        self.q_proj = nn.Linear(dim, dim, **kw)
        self.v_proj = nn.Linear(dim, dim, **kw)
        self.c_proj = nn.Linear(dim, out_dim, **kw)
        self.hook_attn = nn.Identity()  # [B, heads, 1, Q + 1]

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, Q, D = h.shape
        H = self.heads
        Dh = D // H
        x = torch.cat([h.mean(dim=1, keepdim=True), h], dim=1)  # [B, Q+1, D]
        x = x + self.positional_embedding.to(x.dtype)  # [B, Q+1, D]

        q = self.q_proj(x[:, :1]).view(B, 1, H, Dh).transpose(1, 2)  # [B, H, 1, Dh]
        k = self.k_proj(x).view(B, Q + 1, H, Dh).transpose(1, 2)  # [B, H, Q+1, Dh]
        v = self.v_proj(x).view(B, Q + 1, H, Dh).transpose(1, 2)  # [B, H, Q+1, Dh]

        attn = ((q @ k.transpose(-2, -1)) / math.sqrt(Dh)).softmax(dim=-1)  # [B, H, 1, Q+1]
        attn = self.hook_attn(attn)
        out = (attn @ v).transpose(1, 2).reshape(B, D)  # [B, D]
        return self.c_proj(out)  # [B, out_dim]


class ResamplerXLV2(nn.Module):
    """features [B, N, embedding_dim] -> (encoder_hidden_states [B, Q, out1+out2],
    text_embeds [B, out2]).  Perceiver: ``depth`` x (attention + feed-forward)
    on ``num_queries`` learned latents, then two linear heads and an attention pool.
    """

    def __init__(self, config: DetokenizerConfig, device=None, dtype=None):
        super().__init__()
        c = config
        kw = dict(device=device, dtype=dtype)
        self.config = c
        self.latents = nn.Parameter(torch.randn(1, c.num_queries, c.dim, **kw) / c.dim**0.5)
        self.proj_in = nn.Linear(c.embedding_dim, c.dim, **kw)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                PerceiverAttention(c.dim, c.dim_head, c.heads, **kw),
                feed_forward(c.dim, c.ff_mult, **kw),
            ])
            for _ in range(c.depth)
        )
        self.norm_out = nn.LayerNorm(c.dim, **kw)
        self.unet_proj_1 = nn.Linear(c.dim, c.output1_dim, **kw)  # the CLIP-L part of the context
        self.unet_proj_2 = nn.Linear(c.dim, c.output2_dim, **kw)  # the CLIP-G part of the context
        self.unet_attnpool = AttentionPool(c.num_queries, c.dim, c.heads, c.output2_dim, **kw)
        self.hook_latents = nn.Identity()  # normed latents [B, Q, D]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        if x.dim() != 3 or x.shape[-1] != c.embedding_dim or x.shape[1] == 0:
            raise ValueError(
                f"ResamplerXLV2 expects features of shape [batch, tokens, {c.embedding_dim}], got {tuple(x.shape)}"
            )
        B = x.shape[0]
        if c.normalize:
            x = F.normalize(x, dim=1)  # published default dim: across the tokens of [B, N, C]
        x = self.proj_in(x)  # [B, N, D]
        latents = self.latents.expand(B, -1, -1)  # [B, Q, D]
        for attn, ff in self.layers:
            latents = latents + attn(x, latents)  # [B, Q, D]
            latents = latents + ff(latents)  # [B, Q, D]
        h = self.hook_latents(self.norm_out(latents))  # [B, Q, D]

        encoder_hidden_states = torch.cat([self.unet_proj_1(h), self.unet_proj_2(h)], dim=-1)  # [B, Q, out1+out2]
        text_embeds = self.unet_attnpool(h)  # [B, out2]
        return encoder_hidden_states, text_embeds


# -----------------------------------------------------------------------------
# the de-tokenizer


def _randn(shape, generator: torch.Generator | None, device, dtype) -> torch.Tensor:
    """Normal noise drawn on the generator's device (so a CPU seed gives the
    same numbers whatever device the model is on), then moved."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)


class Detokenizer(nn.Module):
    """Published ``SDXLAdapter`` (``resampler`` + ``unet``) with its ``vae`` and
    ``scheduler``: features [B, N, embedding_dim] -> images [B, 3, H, W]."""

    def __init__(self, config: DetokenizerConfig | None = None, device=None, dtype=None):
        super().__init__()
        self.config = config = config or DetokenizerConfig.published()
        self.resampler = ResamplerXLV2(config, device=device, dtype=dtype)
        # diffusers constructors take no device: build under a device context instead
        # (on "meta" this allocates nothing, so SDXL's 2.6 B parameters cost no memory)
        with torch.device(device) if device is not None else nullcontext():
            self.unet = UNet2DConditionModel(**config.unet)
            self.vae = AutoencoderKL(**config.vae)
        if dtype is not None:
            self.unet.to(dtype=dtype)
            self.vae.to(dtype=dtype)
        self.scheduler = EulerDiscreteScheduler(**config.scheduler)
        # step callbacks called by every sample() (a trace registers here); see watching_steps
        self.step_callbacks: list = []

    # -- small helpers ------------------------------------------------------

    @property
    def adapter(self) -> ResamplerXLV2:
        """The adapter resampler (``SDXLAdapter.resampler`` in the published code)."""
        return self.resampler

    @property
    def device(self) -> torch.device:
        return self.resampler.latents.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def adapter_parameters(self):
        """What the de-tokenizer stage trains: resampler + UNet (the VAE stays fixed)."""
        yield from self.resampler.parameters()
        yield from self.unet.parameters()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """The published ``SDXLAdapter`` keys only: ``resampler.*`` and ``unet.*``."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(("resampler.", "unet."))}

    def _check_features(self, features: torch.Tensor) -> None:
        D = self.config.embedding_dim
        if not torch.is_tensor(features) or features.dim() != 3 or features.shape[-1] != D or features.shape[1] == 0:
            shape = tuple(features.shape) if torch.is_tensor(features) else type(features).__name__
            raise ValueError(f"features must have shape [batch, tokens, {D}] (e.g. [B, 64, {D}]), got {shape}")

    def _check_size(self, height: int, width: int) -> None:
        f = self.vae_scale_factor
        if height <= 0 or width <= 0 or height % f or width % f:
            raise ValueError(f"height and width must be positive multiples of the VAE factor {f}, got {height} x {width}")

    # -- conditions ---------------------------------------------------------

    def time_ids(self, batch: int, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """SDXL micro-conditioning [batch, 6] = (orig_h, orig_w, crop_top, crop_left,
        target_h, target_w) with original = target = (height, width), no crop."""
        height = self.config.image_size if height is None else height
        width = self.config.image_size if width is None else width
        ids = torch.tensor([height, width, 0, 0, height, width], device=self.device, dtype=self.dtype)
        return ids.expand(batch, NUM_TIME_IDS).clone()

    def encode_condition(self, features: torch.Tensor, height: int | None = None, width: int | None = None):
        """features [B, N, embedding_dim] -> (encoder_hidden_states [B, Q, cross_attention_dim],
        text_embeds [B, pooled_dim], time_ids [B, 6])."""
        self._check_features(features)
        encoder_hidden_states, text_embeds = self.resampler(features.to(self.device, self.resampler.latents.dtype))
        return encoder_hidden_states, text_embeds, self.time_ids(features.shape[0], height, width)

    # -- images <-> latents --------------------------------------------------

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """images [B, 3, H, W] in [-1, 1] -> scaled latents [B, C, H/f, W/f] (no grad)."""
        with torch.no_grad():
            posterior = self.vae.encode(images.to(self.device, self.vae.dtype)).latent_dist
            return posterior.sample(generator) * self.vae.config.scaling_factor

    def _check_images(self, images: torch.Tensor, batch: int | None = None) -> None:
        if not torch.is_tensor(images) or images.dim() != 4 or images.shape[1] != self.vae.config.in_channels:
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"images must have shape [batch, {self.vae.config.in_channels}, H, W] in [-1, 1], got {shape}")
        self._check_size(images.shape[2], images.shape[3])
        if batch is not None and images.shape[0] != batch:
            raise ValueError(f"images batch ({images.shape[0]}) does not match features batch ({batch})")

    # -- sampling -----------------------------------------------------------

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents [B, C, h, w] -> images [B, 3, H, W] in [0, 1]."""
        images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return (images.float() / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def sample(
        self,
        features: torch.Tensor,
        num_inference_steps: int | None = None,
        guidance_scale: float = 1.0,
        generator: torch.Generator | None = None,
        callback: Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
        output_type: str = "pil",
        height: int | None = None,
        width: int | None = None,
        negative_features: torch.Tensor | None = None,
        latents: torch.Tensor | None = None,
        callback_on_step_end: Callable | None = None,
        callback_on_step_end_tensor_inputs: tuple[str, ...] = ("latents",),
    ):
        """features [B, N, embedding_dim] -> images.

        ``output_type``: "pil" (list of PIL images), "pt" ([B, 3, H, W] in [0, 1])
        or "latent" ([B, C, H/f, W/f]).  ``guidance_scale > 1`` runs an
        unconditional branch on ``negative_features`` (default: zeros).
        ``latents``: optional unit-variance starting noise [B, C, H/f, W/f]
        (scaled by ``scheduler.init_noise_sigma``, as diffusers pipelines do).

        After each step, as in diffusers pipelines, ``callback_on_step_end(detok, step_index, timestep,
        callback_kwargs)`` gets the tensors named in ``callback_on_step_end_tensor_inputs`` (any of
        :data:`STEP_TENSORS`) and may return a dict whose ``"latents"`` replace the latents; the older
        ``callback(step_index, timestep, latents, noise_pred)`` only looks. Callbacks in
        ``self.step_callbacks`` (see :meth:`watching_steps`) run first, on every call, with all of
        :data:`STEP_TENSORS`.
        """
        self._check_features(features)
        steps = self.config.num_inference_steps if num_inference_steps is None else num_inference_steps
        if steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {steps}")
        if output_type not in ("pil", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'pt' or 'latent', got {output_type!r}")
        unknown = set(callback_on_step_end_tensor_inputs) - set(STEP_TENSORS)
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs may name {STEP_TENSORS}, got {sorted(unknown)}")
        height = self.config.image_size if height is None else height
        width = self.config.image_size if width is None else width
        self._check_size(height, width)

        cond = self.prepare_conditions(features, height, width, guidance_scale, negative_features)
        self.scheduler.set_timesteps(steps, device=self.device)
        latents = self.prepare_latents(features.shape[0], height, width, generator, latents)
        step_end = [(fn, STEP_TENSORS) for fn in self.step_callbacks]
        if callback_on_step_end is not None:
            step_end.append((callback_on_step_end, tuple(callback_on_step_end_tensor_inputs)))
        for i, t in enumerate(self.scheduler.timesteps):
            noise_pred = self.predict_noise(latents, t, cond, guidance_scale)        # [B, C, h, w]
            out = self.scheduler.step(noise_pred, t, latents, generator=generator)
            latents = out.prev_sample                                                 # [B, C, h, w]
            tensors = {"latents": latents, "noise_pred": noise_pred, "pred_original_sample": out.pred_original_sample}
            for fn, names in step_end:
                returned = fn(self, i, t, {k: tensors[k] for k in names})
                if returned and "latents" in returned:
                    latents = tensors["latents"] = returned["latents"]
            if callback is not None:
                callback(i, t, latents, noise_pred)

        if output_type == "latent":
            return latents
        images = self.decode_latents(latents)  # [B, 3, H, W] in [0, 1]
        return images if output_type == "pt" else _to_pil(images)

    def prepare_conditions(self, features: torch.Tensor, height: int, width: int, guidance_scale: float = 1.0,
                           negative_features: torch.Tensor | None = None) -> dict:
        """The UNet's conditions for features ``[B, N, embedding_dim]``: ``encoder_hidden_states
        [B', Q, cross_attention_dim]``, ``text_embeds [B', pooled_dim]``, ``time_ids [B', 6]`` with
        ``B' = 2B`` (unconditional rows first, on ``negative_features``, default zeros) when
        ``guidance_scale > 1``, else ``B' = B``."""
        ehs, pooled, time_ids = self.encode_condition(features.to(self.device), height, width)
        if guidance_scale > 1.0:
            if negative_features is None:
                negative_features = torch.zeros_like(features)
            if negative_features.shape != features.shape:
                raise ValueError(
                    f"negative_features shape {tuple(negative_features.shape)} must equal features shape {tuple(features.shape)}"
                )
            ehs_u, pooled_u, _ = self.encode_condition(negative_features.to(self.device), height, width)
            ehs, pooled, time_ids = torch.cat([ehs_u, ehs]), torch.cat([pooled_u, pooled]), torch.cat([time_ids, time_ids])
        return {"encoder_hidden_states": ehs, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}

    def prepare_latents(self, batch: int, height: int, width: int, generator: torch.Generator | None = None,
                        latents: torch.Tensor | None = None) -> torch.Tensor:
        """Starting latents ``[batch, C, height/f, width/f]``: unit noise (drawn on the generator's device,
        or the given ``latents``) times the scheduler's ``init_noise_sigma`` (Euler: sqrt(sigma_max^2 + 1));
        call after ``scheduler.set_timesteps``."""
        shape = (batch, self.unet.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        if latents is None:
            latents = _randn(shape, generator, self.device, self.dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        return latents.to(self.device, self.dtype) * self.scheduler.init_noise_sigma

    def predict_noise(self, latents: torch.Tensor, t, cond: dict, guidance_scale: float = 1.0) -> torch.Tensor:
        """The UNet's (guided) prediction ``[B, C, h, w]`` at timestep ``t`` for latents ``[B, C, h, w]`` and
        the conditions of :meth:`prepare_conditions`: ``uncond + guidance_scale * (cond - uncond)`` when
        guiding. (Named as diffusers name it; with v-prediction it is the predicted velocity.)"""
        guided = guidance_scale > 1.0
        model_in = torch.cat([latents, latents]) if guided else latents        # [B or 2B, C, h, w]
        model_in = self.scheduler.scale_model_input(model_in, t)                # x / sqrt(sigma^2 + 1)
        pred = self.unet(model_in, t, **cond).sample
        if guided:
            uncond, cond_pred = pred.chunk(2)
            pred = uncond + guidance_scale * (cond_pred - uncond)
        return pred

    @contextmanager
    def watching_steps(self, fn: Callable):
        """Within the block, every :meth:`sample` calls ``fn(detok, step_index, timestep, tensors)`` after
        each denoising step, ``tensors`` holding all of :data:`STEP_TENSORS` (how a trace sees the loop)."""
        self.step_callbacks.append(fn)
        try:
            yield fn
        finally:
            self.step_callbacks.remove(fn)


def _to_pil(images: torch.Tensor):
    from PIL import Image

    arr = (images.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype("uint8")  # [B, H, W, 3]
    return [Image.fromarray(a) for a in arr]
