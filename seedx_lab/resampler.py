"""The Qwen-VL cross-attention resampler, as SEED-X uses it three times.

One layer of cross-attention from ``G*G`` learnable queries to ``K`` input
tokens:

    kv   = ln_kv(kv_proj(x))                           [B, K, E]
    q    = ln_q(query) + pos(G x G)                    [Q, E]
    k    = kv + pos(resized to sqrt(K) x sqrt(K))      [B, K, E]
    out  = MultiheadAttention(q, k, value=kv)          [B, Q, E]

seedx-tiny alone adds an optional place bias to the scores of some heads
(``ResamplerConfig.locality``; 0, the published value, leaves the module as above).

There is no residual, MLP, output norm or projection inside the module: the
ViT's attention pool adds ``ln_post`` and ``proj`` around it (see vit.py),
while SEED-X's input and output resamplers use it bare.

Where SEED-X uses it (published configs, AILab-CVC/SEED-X):

* input resampler  (configs/clm_models/agent_seed_x.yaml):
  grid 8 (64 queries), kv_dim 4096 (ViT output) -> embed_dim 5120 (LLaMA-13B), 32 heads
* output resampler (same file): grid 8, kv_dim 5120 -> embed_dim 4096, 32 heads
* ViT attention pool (src/models/tokenizer/qwen_visual.py): grid 16 (256
  queries), kv_dim = ViT width 1664 -> output_dim 4096, heads = output_dim // 128,
  LayerNorm eps 1e-6 (the two LLM-side resamplers use the default 1e-5).

state_dict keys, verified against the ``Resampler`` class in
AILab-CVC/SEED-X ``src/models/tokenizer/qwen_visual.py`` (the ``_target_`` of
both resamplers in ``configs/clm_models/agent_seed_x.yaml``), which keeps
Qwen-VL's names:

    pos_embed                [G*G, E]  fixed sin-cos (a frozen Parameter there,
                                       a persistent buffer here: same key)
    query                    [G*G, E]
    kv_proj.weight           [E, kv_dim]  (only when kv_dim != E; no bias)
    attn.in_proj_weight      [3E, E]   torch.nn.MultiheadAttention layout:
    attn.in_proj_bias        [3E]      rows q | k | v, heads contiguous in each
    attn.out_proj.weight     [E, E]
    attn.out_proj.bias       [E]
    ln_q.weight, ln_q.bias, ln_kv.weight, ln_kv.bias   [E]

The checkpoint ``agent/pytorch_model.bin`` prefixes them with
``input_resampler.`` / ``output_resampler.``.

The attention is written out by hand (same numbers as
``nn.MultiheadAttention``, checked in tests) so that the per-head weights
come from the same pass.  Hook points (``nn.Identity``, no parameters):
``hook_attn`` sees the softmax weights [B, heads, Q, K] and ``hook_out`` the
output [B, Q, E].
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .posemb import resize_2d, sincos_2d, square_side

__all__ = ["ResamplerConfig", "Resampler", "AttentionParams"]


@dataclass
class ResamplerConfig:
    """Widths of one resampler.  ``kv_dim=None`` means ``kv_dim = embed_dim``."""

    grid_size: int = 8  # queries = grid_size ** 2
    embed_dim: int = 5120  # query / output width
    num_heads: int = 32
    kv_dim: int | None = 4096  # width of the incoming tokens
    ln_eps: float = 1e-5
    # seedx-tiny only (0 = the published resampler): subtract ``locality * d**2`` from the attention
    # scores, d = distance between a query's grid place and a key's (image side = 1), in the first
    # ``local_heads`` heads (None: all). Adds no parameter, so published weights load unchanged.
    locality: float = 0.0
    local_heads: int | None = None

    def __post_init__(self):
        if self.kv_dim is None:
            self.kv_dim = self.embed_dim
        if self.grid_size <= 0:
            raise ValueError(f"grid_size must be positive, got {self.grid_size}")
        if self.num_heads <= 0 or self.embed_dim % self.num_heads != 0:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by num_heads ({self.num_heads})"
            )
        if self.locality < 0:
            raise ValueError(f"locality must be >= 0, got {self.locality}")
        if self.local_heads is not None and not 0 <= self.local_heads <= self.num_heads:
            raise ValueError(f"local_heads must be between 0 and num_heads ({self.num_heads}), got {self.local_heads}")
        if self.embed_dim % 4 != 0:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by 4 for the 2-D sin-cos positions"
            )

    @property
    def num_queries(self) -> int:
        return self.grid_size**2

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    @classmethod
    def published_input(cls) -> "ResamplerConfig":
        """SEED-X input resampler: ViT features (4096) -> LLaMA-13B embeddings (5120)."""
        return cls(grid_size=8, embed_dim=5120, num_heads=32, kv_dim=4096)

    @classmethod
    def published_output(cls) -> "ResamplerConfig":
        """SEED-X output resampler: LLM hidden states (5120) -> ViT-like features (4096)."""
        return cls(grid_size=8, embed_dim=4096, num_heads=32, kv_dim=5120)

    @classmethod
    def tiny(cls, kv_dim: int, embed_dim: int, num_heads: int = 4, grid_size: int = 8) -> "ResamplerConfig":
        """seedx-tiny: same 64 queries, small widths (e.g. tiny(vit_dim, llm_dim))."""
        return cls(grid_size=grid_size, embed_dim=embed_dim, num_heads=num_heads, kv_dim=kv_dim)


class AttentionParams(nn.Module):
    """Parameters of a multi-head attention laid out like ``nn.MultiheadAttention``.

    ``in_proj_weight`` [3E, E] stacks W_q, W_k, W_v (heads contiguous inside
    each); ``out_proj`` maps the concatenated heads [E] back to [E].  The
    arithmetic lives in ``Resampler.forward``.
    """

    def __init__(self, embed_dim: int, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **kw))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **kw))
        self.out_proj = nn.Linear(embed_dim, embed_dim, **kw)


class Resampler(nn.Module):
    """x [B, K, kv_dim] -> [B, grid_size**2, embed_dim] (optionally with attn [B, H, Q, K]).

    ``K`` must be a square number (the keys are placed on a sqrt(K) grid for
    their positions).
    """

    def __init__(self, config: ResamplerConfig, device=None, dtype=None):
        super().__init__()
        self.config = config
        kw = dict(device=device, dtype=dtype)
        E, Q = config.embed_dim, config.num_queries

        self.register_buffer("pos_embed", sincos_2d(E, config.grid_size, device=device, dtype=dtype))
        self.query = nn.Parameter(torch.empty(Q, E, **kw))
        if config.kv_dim != E:
            self.kv_proj = nn.Linear(config.kv_dim, E, bias=False, **kw)
        else:
            self.kv_proj = nn.Identity()
        self.attn = AttentionParams(E, **kw)
        self.ln_q = nn.LayerNorm(E, eps=config.ln_eps, **kw)
        self.ln_kv = nn.LayerNorm(E, eps=config.ln_eps, **kw)

        self.hook_attn = nn.Identity()  # softmax weights [B, H, Q, K]
        self.hook_out = nn.Identity()  # output [B, Q, E]
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self):
        """Initialise as the published code: trunc-normal(0.02) for the queries and
        linear layers, Xavier for the packed q/k/v projection, zero biases."""
        nn.init.trunc_normal_(self.query, std=0.02)
        if isinstance(self.kv_proj, nn.Linear):
            nn.init.trunc_normal_(self.kv_proj.weight, std=0.02)
        nn.init.xavier_uniform_(self.attn.in_proj_weight)
        nn.init.zeros_(self.attn.in_proj_bias)
        nn.init.trunc_normal_(self.attn.out_proj.weight, std=0.02)
        nn.init.zeros_(self.attn.out_proj.bias)
        for ln in (self.ln_q, self.ln_kv):
            nn.init.ones_(ln.weight)
            nn.init.zeros_(ln.bias)

    def key_positions(self, n_keys: int) -> torch.Tensor:
        """The sin-cos table resized to ``n_keys`` (a square number) -> [n_keys, E]."""
        return resize_2d(self.pos_embed, n_keys)

    def place_distance(self, n_keys: int, device=None) -> torch.Tensor:
        """Squared distance between each query's and each key's grid place -> [Q, n_keys].

        Places are cell centres on a unit square: queries on the G x G grid, keys on sqrt(K) x sqrt(K)."""
        def centres(side):
            c = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side
            yy, xx = torch.meshgrid(c, c, indexing="ij")
            return torch.stack([xx.flatten(), yy.flatten()], -1)            # [side*side, 2] row-major
        return torch.cdist(centres(self.config.grid_size), centres(square_side(n_keys, "n_keys"))) ** 2

    def forward(self, x: torch.Tensor, return_attn: bool = False):
        cfg = self.config
        if x.dim() != 3:
            raise ValueError(
                f"Resampler expects x of shape [batch, keys, kv_dim={cfg.kv_dim}], got {tuple(x.shape)}"
            )
        B, K, C = x.shape
        if C != cfg.kv_dim:
            raise ValueError(f"Resampler expects kv_dim={cfg.kv_dim} input features, got {C} (shape {tuple(x.shape)})")
        if K == 0:
            raise ValueError("Resampler got zero keys")
        square_side(K, "number of keys K (Resampler places keys on a sqrt(K) x sqrt(K) grid)")
        E, H, D = cfg.embed_dim, cfg.num_heads, cfg.head_dim

        # keys/values: project to the query width, then normalise
        kv = self.ln_kv(self.kv_proj(x))  # [B, K, E]
        # queries: the same learned set for every sample, plus their grid positions
        q = self.ln_q(self.query) + self.pos_embed  # [Q, E]
        k = kv + self.key_positions(K)  # [B, K, E]  positions on keys only, not values

        # packed in-projection, nn.MultiheadAttention order q | k | v
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3, dim=0)  # [E, E] each
        b_q, b_k, b_v = self.attn.in_proj_bias.chunk(3, dim=0)  # [E] each
        q = F.linear(q, w_q, b_q).view(1, -1, H, D).transpose(1, 2)  # [1, H, Q, D]
        k = F.linear(k, w_k, b_k).view(B, K, H, D).transpose(1, 2)  # [B, H, K, D]
        v = F.linear(kv, w_v, b_v).view(B, K, H, D).transpose(1, 2)  # [B, H, K, D]

        scores = (q @ k.transpose(-2, -1)) / math.sqrt(D)  # [B, H, Q, K]
        if cfg.locality > 0:  # seedx-tiny's place bias (see ResamplerConfig)
            n_local = H if cfg.local_heads is None else cfg.local_heads
            bias = torch.zeros(H, 1, 1, device=scores.device, dtype=torch.float32)
            bias[:n_local] = cfg.locality
            scores = scores.float() - bias * self.place_distance(K, scores.device)  # [B, H, Q, K]
        attn = scores.float().softmax(dim=-1).to(v.dtype)  # [B, H, Q, K], rows sum to 1
        attn = self.hook_attn(attn)

        out = attn @ v  # [B, H, Q, D]
        out = out.transpose(1, 2).reshape(B, -1, E)  # [B, Q, E]  heads concatenated
        out = self.attn.out_proj(out)  # [B, Q, E]
        out = self.hook_out(out)
        return (out, attn) if return_attn else out
