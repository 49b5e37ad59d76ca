"""The Qwen-VL vision encoder that SEED-X uses (ViT-G/14 with an attention pool).

    pixels [B, 3, S, S]  (CLIP-normalised, see ``seedx_lab.images.normalize``)
      conv1 (patch P, no bias)         -> [B, N, width]    N = (S/P)^2 patches
      + positional_embedding (learned 256-row table, bicubic-resized to N)
      ln_pre
      transformer.resblocks[0..L-1]    -> [B, N, width]    pre-norm blocks
      attn_pool (a Resampler, 256 queries on a 16x16 grid, 2-D sin-cos)
                                       -> [B, 256, output_dim]
      ln_post, @ proj                  -> [B, 256, output_dim]

Published SEED-X config (AILab-CVC/SEED-X configs/visual_encoder/qwen_vitg_448.yaml):
image 448, patch 14, width 1664, 48 layers, 16 heads, mlp_ratio 4.9231,
output_dim 4096 (n_queries defaults to 256).  From the class
``VisionTransformerWithAttnPool`` in src/models/tokenizer/qwen_visual.py:
LayerNorm eps 1e-6 everywhere, exact GELU, MLP width ``int(width * mlp_ratio)``
(= 8192), attention pool heads ``output_dim // 128``, the positional table has
256 rows whatever the image size, ``proj`` is a bare [output_dim, output_dim]
matrix applied as ``x @ proj``.

state_dict keys (verified in the same file; its ``from_pretrained`` loads
``pretrained/QwenViT/qwen_vit_G.pt`` straight into this module with
``load_state_dict(strict=False)``, so the file's keys carry no ``visual.``
prefix):

    conv1.weight                                   [width, 3, P, P]
    positional_embedding                           [256, width]
    ln_pre.{weight,bias}
    transformer.resblocks.{i}.ln_1.{weight,bias}
    transformer.resblocks.{i}.attn.in_proj.{weight,bias}   [3*width, width], [3*width]
    transformer.resblocks.{i}.attn.out_proj.{weight,bias}
    transformer.resblocks.{i}.ln_2.{weight,bias}
    transformer.resblocks.{i}.mlp.c_fc.{weight,bias}
    transformer.resblocks.{i}.mlp.c_proj.{weight,bias}
    attn_pool.{pos_embed,query,kv_proj.weight,attn.in_proj_weight,attn.in_proj_bias,
               attn.out_proj.weight,attn.out_proj.bias,ln_q.*,ln_kv.*}
    ln_post.{weight,bias}
    proj                                           [output_dim, output_dim]

Note the block attention's packed ``in_proj`` is *not* laid out like
``nn.MultiheadAttention``: its output is read as [heads, 3, head_dim]
(q, k, v interleaved per head).  ``SelfAttention`` keeps that layout so the
published weights load unchanged.

Hook points (``nn.Identity``): ``hook_embed`` (after ln_pre, [B, N, width]),
``transformer.resblocks.{i}.hook_resid_post`` ([B, N, width]),
``attn_pool.hook_attn`` ([B, heads, 256, N]), ``hook_out`` ([B, 256, output_dim]).
``model.blocks`` is a shortcut to ``model.transformer.resblocks``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .posemb import resize_2d
from .resampler import Resampler, ResamplerConfig

__all__ = [
    "ViTConfig",
    "SelfAttention",
    "MLP",
    "Block",
    "Transformer",
    "VisionTransformer",
]

@dataclass
class ViTConfig:
    image_size: int = 448
    patch_size: int = 14
    width: int = 1664
    layers: int = 48
    heads: int = 16
    mlp_ratio: float = 4.9231
    n_queries: int = 256  # attention-pool queries (a square number)
    output_dim: int = 4096
    pool_heads: int | None = None  # None -> output_dim // 128, as published
    pos_rows: int = 256  # rows of the learned positional table (published: always 256)
    ln_eps: float = 1e-6

    def __post_init__(self):
        if self.pool_heads is None:
            self.pool_heads = self.output_dim // 128
        if self.pool_heads <= 0:
            raise ValueError(
                f"pool_heads must be positive; output_dim={self.output_dim} // 128 is 0, set pool_heads explicitly"
            )
        if self.image_size % self.patch_size != 0:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
        if self.width % self.heads != 0:
            raise ValueError(f"width ({self.width}) must be divisible by heads ({self.heads})")
        side = int(round(self.n_queries**0.5))
        if side * side != self.n_queries:
            raise ValueError(f"n_queries must be a square number, got {self.n_queries}")

    @property
    def grid(self) -> int:
        """Patches per side at the configured image size."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def mlp_width(self) -> int:
        return int(self.width * self.mlp_ratio)

    def pool_config(self) -> ResamplerConfig:
        """The attention pool: n_queries queries, ViT width -> output_dim."""
        return ResamplerConfig(
            grid_size=int(round(self.n_queries**0.5)),
            embed_dim=self.output_dim,
            num_heads=self.pool_heads,
            kv_dim=self.width,
            ln_eps=self.ln_eps,
        )

    @classmethod
    def published(cls) -> "ViTConfig":
        """Qwen-VL ViT-G/14 at 448 px as configured by SEED-X (about 1.9 B parameters)."""
        return cls(image_size=448, patch_size=14, width=1664, layers=48, heads=16,
                   mlp_ratio=4.9231, n_queries=256, output_dim=4096, pool_heads=32)

    @classmethod
    def tiny(cls) -> "ViTConfig":
        """seedx-tiny: 64 px, patch 4 -> the same 16x16 = 256 patches and 256 output tokens."""
        return cls(image_size=64, patch_size=4, width=96, layers=4, heads=4,
                   mlp_ratio=4.0, n_queries=256, output_dim=64, pool_heads=4)


class SelfAttention(nn.Module):
    """Qwen-VL ``VisualAttention``: x [B, N, C] -> [B, N, C].

    ``in_proj`` output is read per head as [q | k | v] (layout [H, 3, D]).
    """

    def __init__(self, width: int, heads: int, device=None, dtype=None):
        super().__init__()
        self.heads = heads
        self.in_proj = nn.Linear(width, 3 * width, device=device, dtype=dtype)
        self.out_proj = nn.Linear(width, width, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H = self.heads
        qkv = self.in_proj(x).view(B, N, H, 3, C // H)  # [B, N, H, 3, D]  per-head interleaved
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # 3 x [B, H, N, D]
        y = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, D]  softmax(q k^T / sqrt(D)) v
        y = y.transpose(1, 2).reshape(B, N, C)  # [B, N, C]
        return self.out_proj(y)


class MLP(nn.Module):
    """c_fc -> exact GELU -> c_proj: [B, N, C] -> [B, N, C]."""

    def __init__(self, width: int, hidden: int, device=None, dtype=None):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden, device=device, dtype=dtype)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + attn(ln_1(x)), then + mlp(ln_2(.)).  [B, N, C] -> [B, N, C]."""

    def __init__(self, config: ViTConfig, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        C = config.width
        self.ln_1 = nn.LayerNorm(C, eps=config.ln_eps, **kw)
        self.attn = SelfAttention(C, config.heads, **kw)
        self.ln_2 = nn.LayerNorm(C, eps=config.ln_eps, **kw)
        self.mlp = MLP(C, config.mlp_width, **kw)
        self.hook_resid_post = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # [B, N, C]
        x = x + self.mlp(self.ln_2(x))  # [B, N, C]
        return self.hook_resid_post(x)


class Transformer(nn.Module):
    """The stack, named ``transformer.resblocks`` as in the published weights."""

    def __init__(self, config: ViTConfig, device=None, dtype=None):
        super().__init__()
        self.resblocks = nn.ModuleList([Block(config, device=device, dtype=dtype) for _ in range(config.layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTransformer(nn.Module):
    """CLIP-normalised pixels [B, 3, S, S] -> [B, n_queries, output_dim].

    ``S`` may differ from ``config.image_size`` (the positional table is
    resized), but it must be a multiple of the patch size.
    """

    def __init__(self, config: ViTConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        kw = dict(device=device, dtype=dtype)
        C, P = config.width, config.patch_size

        self.conv1 = nn.Conv2d(3, C, kernel_size=P, stride=P, bias=False, **kw)
        self.positional_embedding = nn.Parameter(torch.empty(config.pos_rows, C, **kw))
        self.ln_pre = nn.LayerNorm(C, eps=config.ln_eps, **kw)
        self.transformer = Transformer(config, **kw)
        self.attn_pool = Resampler(config.pool_config(), **kw)
        self.ln_post = nn.LayerNorm(config.output_dim, eps=config.ln_eps, **kw)
        self.proj = nn.Parameter(torch.empty(config.output_dim, config.output_dim, **kw))

        self.hook_embed = nn.Identity()
        self.hook_out = nn.Identity()
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Published init for the two bare matrices: N(0, 1/fan) scaled normals."""
        nn.init.normal_(self.positional_embedding, std=self.config.width**-0.5)
        nn.init.normal_(self.proj, std=self.config.output_dim**-0.5)

    @property
    def blocks(self) -> nn.ModuleList:
        """Shortcut to ``transformer.resblocks`` (not a separate submodule)."""
        return self.transformer.resblocks

    def _check_pixels(self, pixels: torch.Tensor):
        P = self.config.patch_size
        if pixels.dim() != 4:
            raise ValueError(f"VisionTransformer expects pixels [B, 3, H, W], got shape {tuple(pixels.shape)}")
        _, c, h, w = pixels.shape
        if c != 3:
            raise ValueError(f"VisionTransformer expects 3 colour channels, got {c} (shape {tuple(pixels.shape)})")
        if h != w:
            raise ValueError(f"VisionTransformer expects square images, got H={h}, W={w}")
        if h % P != 0 or h == 0:
            raise ValueError(f"image side {h} is not a positive multiple of patch_size {P}")
        if not pixels.is_floating_point():
            raise ValueError(f"VisionTransformer expects floating-point normalised pixels, got dtype {pixels.dtype}")

    def patch_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels [B, 3, S, S] -> transformer output [B, (S/P)^2, width] (before the pool)."""
        self._check_pixels(pixels)
        x = pixels.to(self.conv1.weight.dtype)
        x = self.conv1(x)  # [B, C, g, g]
        x = x.flatten(2).transpose(1, 2)  # [B, N, C]   raster order, N = g*g
        x = x + resize_2d(self.positional_embedding, x.shape[1])  # [B, N, C]
        x = self.hook_embed(self.ln_pre(x))  # [B, N, C]
        return self.transformer(x)  # [B, N, C]

    def pool(self, features: torch.Tensor) -> torch.Tensor:
        """[B, N, width] -> [B, n_queries, output_dim]: attention pool, ln_post, proj."""
        x = self.attn_pool(features)  # [B, Q, D]
        x = self.ln_post(x)  # [B, Q, D]
        x = x @ self.proj  # [B, Q, D]
        return self.hook_out(x)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.pool(self.patch_features(pixels))  # [B, n_queries, output_dim]
