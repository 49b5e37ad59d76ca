"""Tests for seedx_lab.resampler (and the sin-cos helpers in seedx_lab.posemb)."""

import math

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from seedx_lab.posemb import resize_2d, sincos_2d
from seedx_lab.resampler import Resampler, ResamplerConfig

# Keys of the published Qwen-VL / SEED-X Resampler (src/models/tokenizer/qwen_visual.py).
PUBLISHED_KEYS = {
    "pos_embed",
    "query",
    "kv_proj.weight",
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "ln_q.weight",
    "ln_q.bias",
    "ln_kv.weight",
    "ln_kv.bias",
}


def make(kv_dim=48, embed_dim=64, heads=4, grid=8, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    m = Resampler(ResamplerConfig.tiny(kv_dim, embed_dim, num_heads=heads, grid_size=grid), dtype=dtype)
    # non-trivial layer norms and biases, so the reference has to use them
    with torch.no_grad():
        for p in (m.ln_q.weight, m.ln_kv.weight):
            p.copy_(1 + 0.1 * torch.randn_like(p))
        for p in (m.ln_q.bias, m.ln_kv.bias, m.attn.in_proj_bias, m.attn.out_proj.bias):
            p.copy_(0.1 * torch.randn_like(p))
    return m.eval()


def reference_table(dim, grid):
    """2-D sin-cos table written from the formula, one cell at a time."""
    quarter = dim // 4
    table = np.zeros((grid * grid, dim))
    for row in range(grid):
        for col in range(grid):
            t = row * grid + col
            for i in range(quarter):
                w = 1.0 / 10000 ** (i / quarter)
                table[t, i] = math.sin(col * w)
                table[t, quarter + i] = math.cos(col * w)
                table[t, 2 * quarter + i] = math.sin(row * w)
                table[t, 3 * quarter + i] = math.cos(row * w)
    return torch.from_numpy(table)


def bicubic(table, n):
    g, s = int(math.isqrt(table.shape[0])), int(math.isqrt(n))
    img = table.reshape(g, g, -1).permute(2, 0, 1)[None].float()
    out = F.interpolate(img, size=(s, s), mode="bicubic", align_corners=False)
    return out[0].permute(1, 2, 0).reshape(n, -1).to(table.dtype)


# ---------------------------------------------------------------- positions


def test_sincos_table_matches_formula():
    got = sincos_2d(32, 5, dtype=torch.float64)
    assert got.shape == (25, 32)
    torch.testing.assert_close(got, reference_table(32, 5), rtol=0, atol=1e-12)


def test_resize_2d_identity_and_interpolation():
    table = sincos_2d(16, 8)
    assert resize_2d(table, 64) is table
    got = resize_2d(table, 144)
    assert got.shape == (144, 16)
    torch.testing.assert_close(got, bicubic(table, 144))
    with pytest.raises(ValueError, match="square"):
        resize_2d(table, 50)
    with pytest.raises(ValueError, match="divisible by 4"):
        sincos_2d(30, 4)


# ---------------------------------------------------------------- forward


def test_shapes_and_attention_rows():
    m = make(dtype=torch.float32)
    x = torch.randn(3, 256, 48)
    out, attn = m(x, return_attn=True)
    assert out.shape == (3, 64, 64)
    assert attn.shape == (3, 4, 64, 256)
    assert (attn >= 0).all()
    torch.testing.assert_close(attn.sum(-1), torch.ones(3, 4, 64))
    assert torch.equal(m(x), out)  # return_attn only changes what is returned


def test_output_equals_per_head_recomputation():
    m = make()
    B, K, E, H = 2, 64, 64, 4
    d = E // H
    x = torch.randn(B, K, 48, dtype=torch.float64)
    out, attn = m(x, return_attn=True)

    sd = {k: v.detach() for k, v in m.state_dict().items()}
    torch.testing.assert_close(sd["pos_embed"], reference_table(E, 8), rtol=0, atol=1e-12)
    pos = reference_table(E, 8)
    kv = F.layer_norm(x @ sd["kv_proj.weight"].T, (E,), sd["ln_kv.weight"], sd["ln_kv.bias"], eps=1e-5)
    q = F.layer_norm(sd["query"], (E,), sd["ln_q.weight"], sd["ln_q.bias"], eps=1e-5) + pos
    k = kv + pos  # K == 64: the table is used as is
    W, b = sd["attn.in_proj_weight"], sd["attn.in_proj_bias"]
    Wq, Wk, Wv = W[:E], W[E : 2 * E], W[2 * E :]
    bq, bk, bv = b[:E], b[E : 2 * E], b[2 * E :]
    for n in range(B):
        heads = []
        for h in range(H):
            s = slice(h * d, (h + 1) * d)
            qh = q @ Wq[s].T + bq[s]  # [Q, d]
            kh = k[n] @ Wk[s].T + bk[s]  # [K, d]
            vh = kv[n] @ Wv[s].T + bv[s]  # [K, d]
            p = torch.softmax(qh @ kh.T / math.sqrt(d), dim=-1)  # [Q, K]
            torch.testing.assert_close(attn[n, h], p)
            heads.append(p @ vh)
        ref = torch.cat(heads, dim=-1) @ sd["attn.out_proj.weight"].T + sd["attn.out_proj.bias"]
        torch.testing.assert_close(out[n], ref)


def test_matches_torch_multihead_attention_with_interpolated_keys():
    """The published module calls nn.MultiheadAttention; loading our attn.* weights
    into one must give the same output and per-head weights (here with 144 keys,
    so the 8x8 key positions are resized to 12x12)."""
    m = make()
    B, K, E, H = 2, 144, 64, 4
    x = torch.randn(B, K, 48, dtype=torch.float64)
    out, attn = m(x, return_attn=True)
    assert attn.shape == (B, H, 64, K)
    torch.testing.assert_close(attn.sum(-1), torch.ones(B, H, 64, dtype=torch.float64))

    mha = nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    missing = mha.load_state_dict({k[5:]: v for k, v in m.state_dict().items() if k.startswith("attn.")})
    assert not missing.missing_keys and not missing.unexpected_keys
    with torch.no_grad():
        kv = m.ln_kv(m.kv_proj(x))
        q = (m.ln_q(m.query) + m.pos_embed).expand(B, -1, -1)
        k = kv + bicubic(m.pos_embed, K)
        ref, ref_w = mha(q, k, kv, need_weights=True, average_attn_weights=False)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(attn, ref_w)


def test_key_positions_depend_on_key_count():
    m = make()
    torch.testing.assert_close(m.key_positions(144), bicubic(m.pos_embed, 144))
    assert m.key_positions(64) is m.pos_embed
    # the positions matter: permuting the keys changes the result
    x = torch.randn(1, 144, 48, dtype=torch.float64)
    perm = torch.randperm(144)
    assert not torch.allclose(m(x), m(x[:, perm]))


def test_hooks_see_attention_and_output():
    m = make(dtype=torch.float32)
    seen = {}
    hs = [
        m.hook_attn.register_forward_hook(lambda mod, i, o: seen.__setitem__("attn", o)),
        m.hook_out.register_forward_hook(lambda mod, i, o: seen.__setitem__("out", o)),
    ]
    out, attn = m(torch.randn(2, 256, 48), return_attn=True)
    for h in hs:
        h.remove()
    assert torch.equal(seen["attn"], attn) and torch.equal(seen["out"], out)


def test_gradients_reach_queries_but_positions_are_fixed():
    m = make(dtype=torch.float32)
    m(torch.randn(2, 64, 48)).square().mean().backward()
    assert m.query.grad is not None and m.query.grad.abs().sum() > 0
    assert m.kv_proj.weight.grad.abs().sum() > 0
    names = {n for n, _ in m.named_parameters()}
    assert "pos_embed" not in names and "pos_embed" in m.state_dict()


# ---------------------------------------------------------------- errors


def test_bad_inputs_raise_value_errors():
    m = make(dtype=torch.float32)
    with pytest.raises(ValueError, match=r"\[batch, keys, kv_dim=48\]"):
        m(torch.randn(64, 48))
    with pytest.raises(ValueError, match="kv_dim=48.*got 32"):
        m(torch.randn(1, 64, 32))
    with pytest.raises(ValueError, match="number of keys.*got 50"):
        m(torch.randn(1, 50, 48))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        ResamplerConfig(grid_size=8, embed_dim=64, num_heads=5, kv_dim=32)
    with pytest.raises(ValueError, match="divisible by 4"):
        ResamplerConfig(grid_size=8, embed_dim=6, num_heads=3, kv_dim=32)


# ---------------------------------------------------------------- configs


def expected_params(cfg):
    E, Q = cfg.embed_dim, cfg.grid_size**2
    n = Q * E  # query
    n += cfg.kv_dim * E if cfg.kv_dim != E else 0  # kv_proj (no bias)
    n += 3 * E * E + 3 * E  # packed q/k/v
    n += E * E + E  # out_proj
    n += 2 * 2 * E  # ln_q, ln_kv
    return n


@pytest.mark.parametrize(
    "cfg, expected",
    [(ResamplerConfig.published_input(), 126_197_760), (ResamplerConfig.published_output(), 88_375_296)],
)
def test_published_configs_on_meta(cfg, expected):
    m = Resampler(cfg, device="meta")
    n = sum(p.numel() for p in m.parameters())
    assert n == expected_params(cfg) == expected
    sd = m.state_dict()
    assert set(sd) == PUBLISHED_KEYS
    E = cfg.embed_dim
    assert sd["pos_embed"].shape == (64, E) and sd["query"].shape == (64, E)
    assert sd["kv_proj.weight"].shape == (E, cfg.kv_dim)
    assert sd["attn.in_proj_weight"].shape == (3 * E, E)
    assert m.ln_q.eps == 1e-5
    assert all(t.device.type == "meta" for t in sd.values())


def test_published_widths():
    i, o = ResamplerConfig.published_input(), ResamplerConfig.published_output()
    assert (i.grid_size, i.kv_dim, i.embed_dim, i.num_heads) == (8, 4096, 5120, 32)
    assert (o.grid_size, o.kv_dim, o.embed_dim, o.num_heads) == (8, 5120, 4096, 32)
    assert i.num_queries == o.num_queries == 64


def test_same_width_has_no_kv_proj():
    m = Resampler(ResamplerConfig(grid_size=4, embed_dim=32, num_heads=2, kv_dim=None))
    assert isinstance(m.kv_proj, nn.Identity)
    assert set(m.state_dict()) == PUBLISHED_KEYS - {"kv_proj.weight"}
    assert m(torch.randn(1, 16, 32)).shape == (1, 16, 32)


def test_dtype_argument_respected():
    m = Resampler(ResamplerConfig.tiny(48, 64), dtype=torch.float64)
    assert all(t.dtype == torch.float64 for t in m.state_dict().values())
    out, attn = m(torch.randn(1, 64, 48, dtype=torch.float64), return_attn=True)
    assert out.dtype == attn.dtype == torch.float64


# ---------------------------------------------------------------- seedx-tiny's place bias


def test_place_distance_is_between_cell_centres():
    d = make().place_distance(256)                       # 8x8 queries, 16x16 keys, unit square
    assert d.shape == (64, 256)
    # query 0 sits at (1/16, 1/16); key 0 at (1/32, 1/32), key 255 at (31/32, 31/32)
    assert d[0, 0].item() == pytest.approx(2 * (1 / 32) ** 2)
    assert d[0, 255].item() == pytest.approx(2 * (29 / 32) ** 2)
    # the four nearest keys of query 9 (row 1, column 1) are the 2x2 block it covers
    assert set(d[9].topk(4, largest=False).indices.tolist()) == {34, 35, 50, 51}


@pytest.mark.parametrize("local_heads", [None, 1])
def test_locality_reweights_attention_by_exp_of_minus_distance(local_heads):
    """softmax(s - l d^2) = softmax(s) * exp(-l d^2), renormalised: checked head by head against the
    unbiased resampler with the same weights."""
    plain = make()
    cfg = ResamplerConfig.tiny(48, 64, num_heads=4, grid_size=8)
    cfg.locality, cfg.local_heads = 30.0, local_heads
    local = Resampler(cfg, dtype=torch.float64)
    local.load_state_dict(plain.state_dict())
    x = torch.randn(2, 256, 48, dtype=torch.float64)
    _, a0 = plain(x, return_attn=True)
    _, a1 = local(x, return_attn=True)
    w = a0 * torch.exp(-30.0 * plain.place_distance(256)).to(a0.dtype)
    want = w / w.sum(-1, keepdim=True)
    n = 4 if local_heads is None else local_heads
    torch.testing.assert_close(a1[:, :n], want[:, :n])
    torch.testing.assert_close(a1[:, n:], a0[:, n:])
    # attention really moves towards the query's own place
    near = plain.place_distance(256) < 0.01
    assert (a1[:, :n] * near).sum(-1).mean() > (a0[:, :n] * near).sum(-1).mean() + 0.2


def test_locality_adds_no_parameter_and_checks_its_numbers():
    cfg = ResamplerConfig.tiny(48, 64, num_heads=4)
    cfg.locality = 10.0
    assert set(Resampler(cfg).state_dict()) == set(make().state_dict())
    with pytest.raises(ValueError, match="locality must be >= 0"):
        ResamplerConfig(grid_size=8, embed_dim=64, num_heads=4, kv_dim=32, locality=-1.0)
    with pytest.raises(ValueError, match=r"local_heads must be between 0 and num_heads \(4\), got 5"):
        ResamplerConfig(grid_size=8, embed_dim=64, num_heads=4, kv_dim=32, locality=1.0, local_heads=5)
