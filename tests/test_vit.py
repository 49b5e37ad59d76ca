"""Tests for seedx_lab.vit (the Qwen-VL ViT with its attention pool)."""

import math

import pytest
import torch
import torch.nn.functional as F

from seedx_lab.images import CLIP_MEAN, CLIP_STD, denormalize, normalize
from seedx_lab.vit import VisionTransformer, ViTConfig


def tiny_model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = VisionTransformer(ViTConfig.tiny(), dtype=dtype)
    with torch.no_grad():  # non-trivial norms so the references must apply them
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                mod.weight.copy_(1 + 0.1 * torch.randn_like(mod.weight))
                mod.bias.copy_(0.1 * torch.randn_like(mod.bias))
    return m.eval()


def ref_block(blk, x, heads):
    """One block from its weights: per-head q|k|v interleaved in in_proj, exact GELU."""
    sd = {k: v.detach() for k, v in blk.state_dict().items()}
    B, N, C = x.shape
    d = C // heads
    eps = 1e-6
    h = F.layer_norm(x, (C,), sd["ln_1.weight"], sd["ln_1.bias"], eps=eps)
    qkv = h @ sd["attn.in_proj.weight"].T + sd["attn.in_proj.bias"]  # [B, N, 3C]
    outs = []
    for i in range(heads):
        chunk = qkv[..., i * 3 * d : (i + 1) * 3 * d]  # this head's [q | k | v]
        q, k, v = chunk[..., :d], chunk[..., d : 2 * d], chunk[..., 2 * d :]
        p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
        outs.append(p @ v)
    x = x + torch.cat(outs, -1) @ sd["attn.out_proj.weight"].T + sd["attn.out_proj.bias"]
    h = F.layer_norm(x, (C,), sd["ln_2.weight"], sd["ln_2.bias"], eps=eps)
    h = h @ sd["mlp.c_fc.weight"].T + sd["mlp.c_fc.bias"]
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    return x + h @ sd["mlp.c_proj.weight"].T + sd["mlp.c_proj.bias"]


def ref_embed(m, pixels):
    """Patchify by reshaping (no conv), add the (resized) table, ln_pre."""
    cfg = m.config
    B, _, S, _ = pixels.shape
    P, g = cfg.patch_size, S // cfg.patch_size
    patches = pixels.reshape(B, 3, g, P, g, P).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, 3 * P * P)
    x = patches @ m.conv1.weight.detach().reshape(cfg.width, -1).T  # [B, N, C]
    table = m.positional_embedding.detach()
    if g * g != table.shape[0]:
        t = int(math.isqrt(table.shape[0]))
        img = table.reshape(t, t, -1).permute(2, 0, 1)[None].float()
        table = F.interpolate(img, size=(g, g), mode="bicubic", align_corners=False)[0]
        table = table.permute(1, 2, 0).reshape(g * g, -1).to(x.dtype)
    x = x + table
    return F.layer_norm(x, (cfg.width,), m.ln_pre.weight.detach(), m.ln_pre.bias.detach(), eps=1e-6)


# ---------------------------------------------------------------- normalisation


def test_normalize_uses_clip_statistics():
    px = torch.rand(2, 3, 5, 5)
    out = normalize(px)
    for c in range(3):
        torch.testing.assert_close(out[:, c], (px[:, c] - CLIP_MEAN[c]) / CLIP_STD[c])
    torch.testing.assert_close(denormalize(out), px)
    assert normalize(px[0]).shape == (3, 5, 5)
    with pytest.raises(ValueError, match="RGB"):
        normalize(torch.rand(2, 4, 5, 5))
    with pytest.raises(ValueError, match="floating-point"):
        normalize(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))


# ---------------------------------------------------------------- forward


def test_tiny_shapes_and_hooks():
    m = tiny_model(dtype=torch.float32)
    assert m.config.num_patches == 256 and m.config.n_queries == 256
    seen = {}
    hooks = [
        m.blocks[3].hook_resid_post.register_forward_hook(lambda mod, i, o: seen.__setitem__("b3", o)),
        m.hook_embed.register_forward_hook(lambda mod, i, o: seen.__setitem__("embed", o)),
        m.attn_pool.hook_attn.register_forward_hook(lambda mod, i, o: seen.__setitem__("pool_attn", o)),
    ]
    px = normalize(torch.rand(2, 3, 64, 64))
    feats = m.patch_features(px)
    out = m(px)
    for h in hooks:
        h.remove()
    assert feats.shape == (2, 256, 96)
    assert out.shape == (2, 256, 64)
    assert seen["embed"].shape == (2, 256, 96)
    assert torch.equal(seen["b3"], feats)  # last block's output is the patch features
    assert seen["pool_attn"].shape == (2, 4, 256, 256)
    assert m.blocks is m.transformer.resblocks
    names = dict(m.named_modules())
    assert "transformer.resblocks.3.hook_resid_post" in names and "attn_pool.hook_attn" in names


def test_block_matches_independent_computation():
    m = tiny_model()
    x = torch.randn(2, 256, 96, dtype=torch.float64)
    with torch.no_grad():
        got = m.blocks[0](x)
    torch.testing.assert_close(got, ref_block(m.blocks[0], x, heads=4))


def test_block_qkv_layout_is_per_head_interleaved():
    """Swapping to the nn.MultiheadAttention layout (all q, then all k, then all v)
    must change the result, so the layout test above is not vacuous."""
    m = tiny_model()
    blk = m.blocks[0]
    x = torch.randn(1, 16, 96, dtype=torch.float64)
    with torch.no_grad():
        base = blk(x)
        C, H = 96, 4
        d = C // H
        w = blk.attn.in_proj.weight.clone()
        # rows [q_all | k_all | v_all] -> per-head [q_h | k_h | v_h]
        blk.attn.in_proj.weight.copy_(w.view(3, H, d, C).transpose(0, 1).reshape(3 * C, C))
        swapped = blk(x)
    assert not torch.allclose(base, swapped)


@pytest.mark.parametrize("side", [64, 32])
def test_forward_matches_independent_pipeline(side):
    """Full forward at the native size (256 patches) and at 32 px (64 patches:
    the 256-row positional table and the pool's key positions are resized)."""
    m = tiny_model()
    px = normalize(torch.rand(2, 3, side, side, dtype=torch.float64))
    with torch.no_grad():
        out = m(px)
        x = ref_embed(m, px)
        for blk in m.blocks:
            x = ref_block(blk, x, heads=4)
        pooled = m.attn_pool(x)  # checked against an independent computation in test_resampler
        ref = F.layer_norm(pooled, (64,), m.ln_post.weight, m.ln_post.bias, eps=1e-6) @ m.proj
    assert out.shape == (2, 256, 64)
    torch.testing.assert_close(out, ref)


def test_float32_pixels_are_cast_to_model_dtype():
    m = tiny_model(dtype=torch.float64)
    out = m(torch.rand(1, 3, 64, 64, dtype=torch.float32))
    assert out.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in m.state_dict().values())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "shape, dtype, message",
    [
        ((3, 64, 64), torch.float32, r"\[B, 3, H, W\]"),
        ((1, 4, 64, 64), torch.float32, "3 colour channels, got 4"),
        ((1, 3, 64, 32), torch.float32, "square images, got H=64, W=32"),
        ((1, 3, 62, 62), torch.float32, "multiple of patch_size 4"),
        ((1, 3, 64, 64), torch.uint8, "floating-point"),
    ],
)
def test_bad_pixels_raise(shape, dtype, message):
    m = tiny_model(dtype=torch.float32)
    with pytest.raises(ValueError, match=message):
        m(torch.zeros(shape, dtype=dtype))


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="pool_heads"):
        ViTConfig(image_size=64, patch_size=4, width=96, layers=1, heads=4, output_dim=64)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        ViTConfig(image_size=65, patch_size=4, width=96, layers=1, heads=4, output_dim=64, pool_heads=4)
    with pytest.raises(ValueError, match="square"):
        ViTConfig(image_size=64, patch_size=4, width=96, layers=1, heads=4, n_queries=200, output_dim=64, pool_heads=4)


# ---------------------------------------------------------------- published


def expected_vit_params(cfg):
    C, L, D, P = cfg.width, cfg.layers, cfg.output_dim, cfg.patch_size
    hidden = int(C * cfg.mlp_ratio)
    block = 2 * 2 * C + (3 * C * C + 3 * C) + (C * C + C) + (C * hidden + hidden) + (hidden * C + C)
    pool = cfg.n_queries * D + C * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * 2 * D
    return 3 * P * P * C + 256 * C + 2 * C + L * block + pool + 2 * D + D * D


def test_published_config_on_meta():
    cfg = ViTConfig.published()
    assert (cfg.image_size, cfg.patch_size, cfg.width, cfg.layers, cfg.heads) == (448, 14, 1664, 48, 16)
    assert cfg.mlp_width == 8192 and cfg.pool_heads == 32 and cfg.grid == 32
    m = VisionTransformer(cfg, device="meta")
    n = sum(p.numel() for p in m.parameters())
    assert n == expected_vit_params(cfg) == 1_934_562_048
    sd = m.state_dict()
    expected_shapes = {
        "conv1.weight": (1664, 3, 14, 14),
        "positional_embedding": (256, 1664),
        "ln_pre.weight": (1664,),
        "transformer.resblocks.0.ln_1.weight": (1664,),
        "transformer.resblocks.0.attn.in_proj.weight": (4992, 1664),
        "transformer.resblocks.0.attn.in_proj.bias": (4992,),
        "transformer.resblocks.0.attn.out_proj.weight": (1664, 1664),
        "transformer.resblocks.47.ln_2.bias": (1664,),
        "transformer.resblocks.47.mlp.c_fc.weight": (8192, 1664),
        "transformer.resblocks.47.mlp.c_proj.weight": (1664, 8192),
        "attn_pool.pos_embed": (256, 4096),
        "attn_pool.query": (256, 4096),
        "attn_pool.kv_proj.weight": (4096, 1664),
        "attn_pool.attn.in_proj_weight": (12288, 4096),
        "attn_pool.attn.in_proj_bias": (12288,),
        "attn_pool.attn.out_proj.weight": (4096, 4096),
        "attn_pool.ln_q.weight": (4096,),
        "attn_pool.ln_kv.bias": (4096,),
        "ln_post.weight": (4096,),
        "proj": (4096, 4096),
    }
    for key, shape in expected_shapes.items():
        assert tuple(sd[key].shape) == shape, key
    per_block = {"ln_1.weight", "ln_1.bias", "attn.in_proj.weight", "attn.in_proj.bias", "attn.out_proj.weight",
                 "attn.out_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
                 "mlp.c_proj.weight", "mlp.c_proj.bias"}
    pool = {"pos_embed", "query", "kv_proj.weight", "attn.in_proj_weight", "attn.in_proj_bias",
            "attn.out_proj.weight", "attn.out_proj.bias", "ln_q.weight", "ln_q.bias", "ln_kv.weight", "ln_kv.bias"}
    expected_keys = {"conv1.weight", "positional_embedding", "ln_pre.weight", "ln_pre.bias", "ln_post.weight",
                     "ln_post.bias", "proj"}
    expected_keys |= {f"transformer.resblocks.{i}.{k}" for i in range(48) for k in per_block}
    expected_keys |= {f"attn_pool.{k}" for k in pool}
    assert set(sd) == expected_keys
    assert m.ln_pre.eps == m.attn_pool.ln_q.eps == 1e-6
