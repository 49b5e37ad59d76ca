# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · The vision encoder and the input resampler
#
# **What this notebook teaches.** Notebook 01 cut a picture into square tiles. Here we follow one
# image further, up to the moment it becomes something the language model can read:
#
# ```
# tile (64 px here, 448 px in SEED-X)
#   -> ViT: cut into 16 x 16 patches, transformer, attention pool   -> 256 feature vectors per tile
#   -> input resampler: 64 learned queries look at those 256        -> 64 vectors per tile, LLM width
#   -> + tile-position embedding ([x, y, 1-x, 1-y] / 2) @ P          -> written into <img_00000>..<img_00063>
# ```
#
# You will:
# 1. tile a picture from the shape world and a (shrunk) photo of a cat;
# 2. run the ViT and check that every tile gives 256 features, in the tiny model and in the published
#    configuration (built on PyTorch's `meta` device, so nothing is allocated);
# 3. run the input resampler and check **claim 1**: 256 tokens in, 64 out;
# 4. look at *where each of the 64 queries looks* inside the tile;
# 5. see what the tile-position embedding adds and why it is "linear in the position";
# 6. compare the sizes of the published and the tiny modules.
#
# Everything runs on a CPU with the trained `seedx-tiny` checkpoint.

# %%
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import skimage.data
import torch
from PIL import Image

import seedx_lab
from seedx_lab import anyres
from seedx_lab import world as W
from seedx_lab.resampler import Resampler, ResamplerConfig
from seedx_lab.vit import ViTConfig, VisionTransformer

warnings.filterwarnings("ignore", category=FutureWarning)
torch.manual_seed(0)
plt.rcParams["figure.dpi"] = 72
model = seedx_lab.load("seedx-tiny", device=DEVICE)
cfg = model.config
print("tile size:", cfg.tile_size, "px | ViT patch:", cfg.vit.patch_size, "px | ViT width:", cfg.vit.width,
      "| ViT output dim:", cfg.vit.output_dim, "| LLM width:", cfg.llm.hidden_size)

# %% [markdown]
# ## 1. Two pictures, cut into tiles
# The first picture comes from the synthetic *shape world* that seedx-tiny was trained on: a
# comprehension sample of 64 x 128 pixels (one column, two rows of tiles). The second is the cat photo
# from scikit-image, shrunk so that it is about as small as the world's pictures.
#
# `model.encode_image` does three things at once: tile the image (`anyres.tile_image` with the model's
# tile size), run the ViT on every view, and return the views' positions.

# %%
sample = W.comprehension_sample(3)
cat = Image.fromarray(skimage.data.chelsea()).resize((135, 90), Image.BICUBIC)
pictures = {"shape world": sample.image, "cat": cat}

fig, axes = plt.subplots(2, 5, figsize=(7.5, 3.4))
for row, (name, im) in zip(axes, pictures.items()):
    tiles = anyres.tile_image(im, base=cfg.tile_size)
    row[0].imshow(im, interpolation="nearest")
    row[0].set_title(f"{name} {im.size[0]}x{im.size[1]}\ngrid {'x'.join(map(str, tiles.decision.grid))}")
    for k, (ax, tile) in enumerate(zip(row[1:], tiles.images)):
        x, y = tiles.positions[k].tolist()
        ax.imshow(tile, interpolation="nearest")
        ax.set_title(("global view" if k == len(tiles) - 1 else f"tile {k}") + f"\n({x:.2f}, {y:.2f})")
    for ax in row:
        ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The vision encoder: 256 features per tile
# SEED-X uses the Qwen-VL ViT-G. It cuts a 448-pixel tile into 14-pixel patches (32 x 32 = 1024
# patches), runs 48 transformer layers over them, then an **attention pool** (256 learned queries on a
# 16 x 16 grid, one cross-attention) squeezes the 1024 patch vectors into 256 output vectors.
#
# The tiny ViT keeps the counts that matter and shrinks the rest: a 64-pixel tile and 4-pixel patches
# give 16 x 16 = 256 patches, and the attention pool again returns 256 vectors (here the pool has as
# many queries as there are patches, so it does not compress; in SEED-X it compresses 4:1).
#
# `seedx_lab.trace` records named activations while a call runs; we ask for the patch embeddings,
# the attention-pool weights and the ViT's output.

# %%
with seedx_lab.trace(model, capture=["vit.embed", "vit.attn_pool.attn", "vit.out", "input_resampler.*"]) as t:
    feats, positions, tiles = model.encode_image(sample.image)
    embeds = model.lvlm.image_embeddings(feats, positions)
for name, shape in t.shapes().items():
    print(f"{name:24s} {tuple(shape)}")

# %% [markdown]
# Now the published configuration. `ViTConfig.published()` holds SEED-X's numbers; building the
# module on the `meta` device creates tensors that have shapes but no storage, so a 1.9-billion
# parameter model costs nothing and a forward pass only computes shapes.

# %%
pub_vit_cfg = ViTConfig.published()
pub_vit = VisionTransformer(pub_vit_cfg, device="meta")
with torch.no_grad():
    pub_pixels = torch.empty(1, 3, 448, 448, device="meta")
    pub_patches = pub_vit.patch_features(pub_pixels)
    pub_feats = pub_vit.pool(pub_patches)
print("published: patches", tuple(pub_patches.shape), "-> ViT features", tuple(pub_feats.shape))
print("tiny:      patches", tuple(t["vit.embed"].shape), "-> ViT features", tuple(feats.shape))

# %%
n_views = len(tiles)
assert pub_vit_cfg.num_patches == (448 // 14) ** 2 == 1024
assert tuple(pub_patches.shape) == (1, 1024, 1664) and tuple(pub_feats.shape) == (1, 256, 4096)
assert cfg.vit.num_patches == (64 // 4) ** 2 == 256
assert tuple(feats.shape) == (n_views, 256, cfg.vit.output_dim)
assert torch.allclose(t["vit.attn_pool.attn"].sum(-1), torch.ones(()), atol=1e-5)
print(f"the ViT gives 256 features per tile: published 1024 patches -> 256, tiny 256 patches -> 256 "
      f"({n_views} views here)")

# %% [markdown]
# ## 3. The input resampler: 256 -> 64 (claim 1)
# The LLM does not read 256 vectors per tile. SEED-X's **input resampler** is one cross-attention
# layer with **64 learned queries** (an 8 x 8 grid): every query takes a weighted average of the 256
# ViT vectors (after a linear map to the LLM's width) and the 64 results replace the embeddings of
# `<img_00000>` ... `<img_00063>` in the prompt.
#
# The seed analysis says (claim 1): *the input resampler compresses 256 ViT tokens to 64 queries*.
# The cell below checks it on seedx-tiny and on the published configuration
# (`ResamplerConfig.published_input()`: ViT width 4096 -> LLaMA-13B width 5120, 32 heads).

# %%
pub_in_cfg = ResamplerConfig.published_input()
pub_in = Resampler(pub_in_cfg, device="meta")
with torch.no_grad():
    pub_tokens = pub_in(pub_feats)
tiny_tokens = t["input_resampler.out"]
print("published input resampler:", tuple(pub_feats.shape), "->", tuple(pub_tokens.shape))
print("tiny input resampler:     ", tuple(feats.shape), "->", tuple(tiny_tokens.shape))

assert pub_in_cfg.num_queries == 64 and tuple(pub_tokens.shape) == (1, 64, 5120)
assert model.lvlm.input_resampler.config.num_queries == 64
assert tuple(tiny_tokens.shape) == (n_views, 64, cfg.llm.hidden_size)
assert tuple(embeds.shape) == (n_views, 64, cfg.llm.hidden_size)
print("claim 1 holds: 256 ViT tokens per view -> 64 LLM tokens, in seedx-tiny and in the published config")

# %% [markdown]
# ## 4. Where does each query look?
# Each query's attention weights are a probability distribution over the 256 ViT tokens of its tile
# (a softmax: non-negative, summing to 1). The resampler has several heads; the trace entry
# `input_resampler.attn` has shape `[views, heads, 64, 256]`. Because the ViT tokens come from a 16 x 16
# grid, every row of 256 weights can be drawn as a 16 x 16 picture over the tile.

# %%
attn = t["input_resampler.attn"]                         # [views, heads, 64, 256]
row_sums = attn.sum(-1)
print("attention:", tuple(attn.shape), "| row sums between", f"{row_sums.min():.6f}", "and", f"{row_sums.max():.6f}")
assert attn.min() >= 0 and torch.allclose(row_sums, torch.ones(()), atol=1e-5)
print("every query's weights over the 256 ViT tokens form a probability distribution (rows sum to 1)")

# %% [markdown]
# Below: the global view of the shape-world picture, then the 64 queries as an 8 x 8 board, each one a
# 16 x 16 map of its attention (averaged over heads, and scaled to its own maximum so that weak and
# sharp maps are equally visible). Bright = looked at.

# %%
view = n_views - 1                                       # the global view
maps = attn[view].mean(0).reshape(8, 8, 16, 16)          # [q_row, q_col, key_row, key_col]
maps = maps / maps.amax(dim=(2, 3), keepdim=True)        # each map scaled to its own maximum
board = maps.permute(0, 2, 1, 3).reshape(128, 128)       # queries tiled side by side
fig, (a0, a1) = plt.subplots(1, 2, figsize=(7.5, 3.8), gridspec_kw=dict(width_ratios=[1, 1.2]))
a0.imshow(tiles.images[view], interpolation="nearest")
a0.set_title("global view (64 x 64)")
a1.imshow(board, cmap="magma", interpolation="nearest")
for k in range(1, 8):
    a1.axhline(16 * k - 0.5, color="white", lw=0.6)
    a1.axvline(16 * k - 0.5, color="white", lw=0.6)
a1.set_title("64 queries (8 x 8), each a 16 x 16 attention map")
for ax in (a0, a1):
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# To browse the maps one query and one head at a time, `widgets.attention_viewer` shows the same
# attention over the view's pixels (live sliders in Jupyter, a still picture in a saved notebook).
# Here it starts at query 27, near the middle of the 8 x 8 grid.

# %%
from seedx_lab import widgets

widgets.attention_viewer(model, sample.image).set(query=27)

# %% [markdown]
# seedx-tiny's resampler has two kinds of heads. The first `local_heads` of them carry a **place bias**
# that section 4b explains; in the others nothing but the learned weights decides where a query looks, as
# in the published resampler. Here we follow those free heads.
#
# One number per query summarises its map: the attention-weighted **centre** of the cells it reads.
# The arrows go from each query's own place on the 8 x 8 grid to that centre.

# %%
rcfg = model.lvlm.input_resampler.config
n_local = rcfg.num_heads if rcfg.local_heads is None else rcfg.local_heads
free = list(range(n_local, rcfg.num_heads)) if rcfg.locality > 0 else list(range(rcfg.num_heads))
print(f"{rcfg.num_heads} heads; place bias {rcfg.locality} in heads {list(range(n_local)) if rcfg.locality else []}; "
      f"free heads {free}")
rows_, cols_ = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
w = attn[view, free].mean(0)                             # [64, 256] mean over the free heads
cy = (w * rows_.reshape(-1)).sum(-1) + 0.5               # in key cells
cx = (w * cols_.reshape(-1)).sum(-1) + 0.5
qy = (torch.arange(64) // 8 + 0.5) * 2                   # a query's own grid place, in key cells
qx = (torch.arange(64) % 8 + 0.5) * 2
fig, ax = plt.subplots(figsize=(4, 4))
ax.imshow(tiles.images[view], extent=[0, 16, 16, 0], alpha=0.5, interpolation="nearest")
ax.quiver(qx, qy, cx - qx, cy - qy, angles="xy", scale_units="xy", scale=1, width=0.004, color="crimson")
ax.scatter(qx, qy, s=6, color="black")
ax.set_title("free heads: query place -> centre of its attention")
ax.set_xlim(0, 16)
ax.set_ylim(16, 0)
plt.show()
entropy = -(w * w.clamp_min(1e-12).log()).sum(-1)
print(f"median entropy of a query's map: {entropy.median():.2f} nats "
      f"(uniform over 256 cells would be {np.log(256):.2f})")

# %% [markdown]
# Do the free heads' arrows point at the shape rather than at the query's own place? Measure it: mark the
# 4 x 4-pixel cells of the global view that are mostly covered by the shape (their colour differs from the
# background's), and compare the share of the picture they cover with the share of attention they receive.
# This is a property of one training run, not of the architecture: another checkpoint may answer otherwise
# (`docs/experiments.md`, section "Binding", keeps what earlier ones gave).

# %%
px = np.asarray(tiles.images[view]).astype(float)                     # [64, 64, 3]
differs = np.abs(px - px[0, 0]).sum(-1) > 30                           # the corner pixel is background
on_shape = torch.from_numpy(differs.reshape(16, 4, 16, 4).mean((1, 3)) > 0.5).reshape(-1)   # [256]
area = on_shape.float().mean().item()
mass = w[:, on_shape].sum(-1).mean().item()
print(f"the shape covers {area:.0%} of the global view's cells and receives {mass:.0%} of the attention "
      "(mean over queries and free heads)")
assert 0 < area < 1 and abs(w.sum(-1).mean().item() - 1) < 1e-4     # a proper share of a distribution
ratio = mass / area
print(f"{ratio:.1f} times its share: " + ("the free heads concentrate on the shape" if ratio > 2 else
      "the free heads do not concentrate on the shape in this checkpoint" if ratio < 1.5 else
      "the free heads lean a little towards the shape"))

# %% [markdown]
# Why might a query prefer some place? The resampler adds the **same kind of 2-D sin-cos position**
# to its queries (an 8 x 8 table) and to its keys (that table resized to 16 x 16). Before any
# training, the position part of a query is most similar to the position part of the keys that sit
# right under it: query `(r, c)` of the 8 x 8 grid matches best a key in the 2 x 2 cell block
# `(2r..2r+1, 2c..2c+1)` of the 16 x 16 grid. Training can then use or ignore that hint.

# %%
rs = model.lvlm.input_resampler
pos_sim = rs.pos_embed @ rs.key_positions(256).T        # [64, 256] position-only similarity
best = pos_sim.argmax(-1)
q_r, q_c = torch.arange(64) // 8, torch.arange(64) % 8
assert bool(((best // 16) // 2 == q_r).all() and ((best % 16) // 2 == q_c).all())
print("for all 64 queries the most similar key position lies in the 2 x 2 block under the query")
fig, axes = plt.subplots(1, 3, figsize=(8, 2.8))
for ax, q in zip(axes, (0, 27, 63)):
    ax.imshow(pos_sim[q].reshape(16, 16), cmap="viridis")
    ax.set_title(f"query {q} = grid ({q // 8}, {q % 8})")
    ax.axis("off")
plt.suptitle("position-only similarity of a query with the 256 keys")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### 4b. What content-seeking queries cost, and seedx-tiny's place bias
# A query that gathers the cells of *a* shape, wherever it is, may gather two objects at once; the LLM
# then has to untangle which colour and which shape belong to which place. The symptom to look for is
# *borrowing*: when an object in company is misnamed, the wrong colour or shape is one that *another object
# of the same picture* has. (An earlier seedx-tiny whose heads were all free borrowed often. That checkpoint
# is not shipped, so this notebook cannot measure it again; its counts are in `docs/experiments.md`,
# section "Binding".)
#
# The shipped seedx-tiny turns the hint of section 4 into a rule in its first `local_heads` heads:
# `ResamplerConfig.locality` subtracts `locality * d**2` from the attention scores, where `d` is the
# distance between the query's place and the key's (image side = 1). That multiplies every weight by
# `exp(-locality * d**2)` before the softmax renormalises. It adds no parameter, and the published
# resampler has `locality = 0`, so real SEED-X weights load and run unchanged. (What the rule bought when
# stage c was retrained with and without it is in `docs/experiments.md` too.)
#
# First, the rule at work: the share of each head's attention that falls within 0.15 of the query's own
# place (a circle around its 2 x 2 block of cells). Do the biased heads keep to their own place, and do the
# free heads look elsewhere?

# %%
near = model.lvlm.input_resampler.place_distance(256) < 0.15 ** 2        # [64, 256]
near_share = (attn[view] * near).sum(-1).mean(-1)                        # [heads]
uniform_share = near.float().mean().item()
for h, v in enumerate(near_share.tolist()):
    kind = "place bias" if rcfg.locality and h < n_local else "free"
    print(f"head {h} ({kind:>10}): {v:.0%} of its attention within 0.15 of the query's place")
print(f"(a query that looked everywhere alike would put {uniform_share:.0%} there)")
if rcfg.locality:
    assert near_share[:n_local].min() > near_share[free].max() + 0.3
    print("the biased heads read their own place; the free heads look elsewhere")

# %% [markdown]
# Now the count on the shipped model. Below, 60 held-out test pictures are described, and every object of
# every picture is checked on its own: is its (shape, colour, position) named? When an object is missed but
# something is named at its place, is the wrong colour or shape one that another object of the same
# picture has (*borrowed*), or one that is nowhere in the picture (*absent*)? Are objects in company named
# as often as lone ones, and is what remains binding (borrowed) or seeing (absent)?

# %%
from collections import Counter


def triple(d):
    return d.get("shape"), d.get("colour"), d.get("position")


tally = Counter()
for s in range(60):
    sm = W.comprehension_sample(s, "test")
    said = [triple(d) for d in W.parse_description(model.describe(sm.image))]
    objs = [o.triple for o in sm.scene.objects]
    group = "one object" if len(objs) == 1 else "2-3 objects"
    for i, t in enumerate(objs):
        tally[group, "objects"] += 1
        if t in said:
            tally[group, "named"] += 1
            continue
        at_place = [x for x in said if x[2] == t[2]]
        if not at_place:
            tally[group, "nothing at its place"] += 1
            continue
        others = objs[:i] + objs[i + 1:]
        for k in (0, 1):                                   # shape, colour
            if at_place[0][k] != t[k]:
                borrowed = any(o[k] == at_place[0][k] for o in others)
                tally[group, "borrowed" if borrowed else "absent"] += 1
for group in ("one object", "2-3 objects"):
    n = tally[group, "objects"]
    print(f"{group:>12}: {tally[group, 'named']:3d} of {n:3d} objects named right ({tally[group, 'named'] / n:.0%}); "
          f"wrong attributes borrowed from another object: {tally[group, 'borrowed']}, absent from the picture: "
          f"{tally[group, 'absent']}; nothing named at the place: {tally[group, 'nothing at its place']}")
one = tally["one object", "named"] / tally["one object", "objects"]
several = tally["2-3 objects", "named"] / tally["2-3 objects", "objects"]
borrowed, absent = tally["2-3 objects", "borrowed"], tally["2-3 objects", "absent"]
print(f"objects in company named right: {several:.0%} (lone objects: {one:.0%}); of the wrong attributes left, "
      f"{borrowed} belong to another object of the same picture and {absent} to none"
      + (": what remains is mostly binding, not seeing" if borrowed > absent else ""))

# %% [markdown]
# Read the two groups above against each other: does company still cost the model objects, and how do the
# borrowed and absent counts compare? The place bias was one of two changes behind the shipped checkpoint.
# The other was data: its LLM stage describes pictures with company most of the time and reads many of them
# per step (the cell below prints the two settings). How the earlier checkpoints did on these same 60
# pictures is in `docs/experiments.md` (section "Binding"); this notebook only measures the shipped one.
#
# Part of the mixing may happen before the resampler, in the ViT's own attention pool, which averages
# patch vectors of neighbouring objects together. Two scratch experiments asked whether that matters: a place
# bias in the ViT's pool as well, and descriptions that name the place first ("at the top a big cyan
# circle") so that the LLM knows where to look before it names the colour. Their numbers, and why
# seedx-tiny's ViT keeps the published pool, are in the same section of `docs/experiments.md`.

# %%
from seedx_lab.training import TrainConfig

defaults = TrainConfig()
print(f"one-object scenes kept for describing: {defaults.comprehension_keep_single} of them "
      f"(comprehension_keep_single); pictures described per step: {defaults.comprehension_batch} "
      f"(comprehension_batch)")

# %% [markdown]
# ## 5. The tile-position embedding
# 64 tokens per view say *what* is in a tile, but not *where the tile was* in the picture. SEED-X adds,
# to all 64 tokens of a view, one vector computed from the view's centre `(x, y)`:
#
# `offset(x, y) = ([x, y, 1 - x, 1 - y] / 2) @ P`, with a learned `P` of shape `[4, LLM width]`
# (`patch_pos_embed`; `add_patch_pos: True` in the published config).
#
# First we check that `image_embeddings` does exactly that: the difference between the embeddings with
# and without positions is the same vector for the 64 tokens of a view, and equals the formula.

# %%
P = model.lvlm.patch_pos_embed.detach()                  # [4, llm_dim]
with torch.no_grad():
    no_pos = model.lvlm.image_embeddings(feats, None)
    with_pos = model.lvlm.image_embeddings(feats, positions)
offset = (torch.cat([positions, 1 - positions], -1) / 2) @ P   # [views, llm_dim]
diff = with_pos - no_pos                                        # [views, 64, llm_dim]
assert torch.allclose(diff, offset[:, None, :].expand_as(diff), atol=1e-5)
print("each view's 64 tokens are shifted by one and the same vector: ([x, y, 1-x, 1-y]/2) @ P")
for k, ((x, y), o) in enumerate(zip(positions.tolist(), offset)):
    rel = (o.norm() / no_pos[k].norm(dim=-1).mean()).item()
    print(f"  view {k} at ({x:.2f}, {y:.2f}): |offset| / |token| = {rel:.2f}")

# %% [markdown]
# Because `x` and `1 - x` always add up to 1, the offset is an **affine** function of the position:
# `offset(x, y) = (P[2] + P[3]) / 2 + x (P[0] - P[2]) / 2 + y (P[1] - P[3]) / 2`. Moving a tile to the
# right adds the same vector wherever it starts, and the four corners of any rectangle of positions
# form a parallelogram. The picture shows, for a grid of positions, the offset's component along the
# "x direction" `P[0] - P[2]` and along the "y direction" `P[1] - P[3]`: two flat ramps.

# %%
def pos_offset(x, y):
    return (torch.tensor([x, y, 1 - x, 1 - y], dtype=P.dtype) / 2) @ P


a, b, c, d = pos_offset(0.25, 0.25), pos_offset(0.75, 0.25), pos_offset(0.25, 0.75), pos_offset(0.75, 0.75)
assert torch.allclose(a + d, b + c, atol=1e-6)
assert torch.allclose(pos_offset(0.5, 0.5), P.sum(0) / 4, atol=1e-6)
print("the offset is affine in (x, y): opposite corners add up to the same vector; "
      "the global view (0.5, 0.5) gets P.sum(0) / 4")

grid = np.linspace(0, 1, 21).tolist()
ux, uy = P[0] - P[2], P[1] - P[3]
along_x = np.array([[float(pos_offset(x, y) @ ux) for x in grid] for y in grid])
along_y = np.array([[float(pos_offset(x, y) @ uy) for x in grid] for y in grid])
fig, axes = plt.subplots(1, 2, figsize=(7, 3))
for ax, m, title in zip(axes, (along_x, along_y), ("offset . (P[0] - P[2])", "offset . (P[1] - P[3])")):
    im = ax.imshow(m, origin="upper", extent=[0, 1, 1, 0], cmap="coolwarm")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8)
plt.tight_layout()
plt.show()

# %% [markdown]
# Does the trained model use it? We ask seedx-tiny to describe the picture three times: with the true
# positions, with every view claiming to be the global view `(0.5, 0.5)`, and with the two tiles'
# positions swapped (the top tile says it is at the bottom). Decoding is greedy, so the answers are
# reproducible. (The global view still shows the whole picture, so the model may not need the tiles'
# positions at all: compare the answers yourself.)

# %%
def answer(pos):
    ids, f, _, cmp = model.comprehension_inputs(sample.image, sample.question)
    out = model.lvlm.generate(ids, image_features=f, ids_cmp_mask=cmp, patch_positions=pos, max_new_tokens=16,
                              processor_mode="strict", eos_token_id=model.tokenizer.eos_token_id,
                              pad_token_id=model.tokenizer.pad_token_id)
    return model.decode(out.new_tokens[0])


swapped = positions.clone()
swapped[[0, 1]] = positions[[1, 0]]
answers = {"true positions": answer(positions), "all at (0.5, 0.5)": answer(torch.full_like(positions, 0.5)),
           "tiles 0 and 1 swapped": answer(swapped)}
print(f"{'reference answer':22s} {sample.answer}")
for name, text in answers.items():
    print(f"{name:22s} {text}")
print("the three answers are", "identical" if len(set(answers.values())) == 1 else "different")

# %% [markdown]
# When the answers agree, the tile positions are not what the model relies on for this picture: the
# global view already shows where the shape is, and the printout in the first cell of this section shows
# how small the learned offset is next to the tokens it is added to. In SEED-X, with 448-pixel tiles of
# large photos, the tiles carry detail the global view has lost, so their positions may matter more
# there; seedx-tiny cannot tell us. (Also look at the global view in section 1: squashing a 64 x 128
# picture into 64 x 64 turns a circle into an ellipse. Read the answers with that in mind.)

# %% [markdown]
# ## 6. How big is each piece?
# The published modules built on the meta device can still count their parameters. The tiny model keeps
# the token counts (256 per tile, 64 queries) and shrinks the widths.

# %%
def n_params(module):
    return sum(p.numel() for p in module.parameters())


pub_out = Resampler(ResamplerConfig.published_output(), device="meta")
rows = [("ViT (with attention pool)", n_params(pub_vit), n_params(model.vit)),
        ("input resampler", n_params(pub_in), n_params(model.lvlm.input_resampler)),
        ("output resampler", n_params(pub_out), n_params(model.lvlm.output_resampler))]
print(f"{'module':28s} {'published':>15s} {'seedx-tiny':>12s} {'ratio':>9s}")
for name, pub, tiny in rows:
    print(f"{name:28s} {pub:15,d} {tiny:12,d} {pub / tiny:9,.0f}")

# %% [markdown]
# The input resampler's count can be worked out by hand: 64 queries of width `E = 5120`, a bias-free
# `kv_proj` from 4096 to 5120, the packed q/k/v projection (`3 E x E` plus bias), the output projection
# (`E x E` plus bias) and two LayerNorms (`2 E` each). The fixed sin-cos table is not a parameter.

# %%
E, K = 5120, 4096
by_hand = 64 * E + K * E + (3 * E * E + 3 * E) + (E * E + E) + 2 * 2 * E
assert n_params(pub_in) == by_hand
assert 1.8e9 < n_params(pub_vit) < 2.0e9
print(f"published input resampler: {by_hand:,d} parameters, as counted by hand; "
      f"published ViT: {n_params(pub_vit) / 1e9:.2f} B parameters")

# %% [markdown]
# ## Exercises
# 1. Pick one head instead of the head average in section 4 (`attn[view, h]`). Do the heads look at
#    different things? Which head is most "local" (lowest entropy)?
# 2. Run the cat photo through `model.encode_image` and draw the attention board for one of its tiles.
#    seedx-tiny never saw a photo: do the maps look different from the shape world's?
# 3. The published ViT's attention pool maps 1024 patches to 256 queries. Build
#    `Resampler(ViTConfig.published().pool_config(), device="meta")` and check the shape of its output
#    for a `[1, 1024, 1664]` input. How many parameters does the pool alone have?
# 4. Show that `offset(x, y)` can be written with only three vectors. Why might SEED-X still use four
#    rows in `P`?
#
# <details><summary>Answer 1</summary>
#
# Draw the board of section 4 once per head instead of once for the mean, and summarise each head by the
# median entropy of its queries' maps (low entropy = a few cells get most of the weight). Expect the heads with
# the place bias of section 4b to be local by construction, since their scores are penalised with the squared
# distance; the question is what the free heads do. The cell below draws the four boards and prints each
# head's median entropy and which head is the lowest.
# </details>
#
# <details><summary>Answer 2</summary>
#
# `model.encode_image(cat)` tiles the photo and runs the ViT; the resampler's attention is captured with
# `seedx_lab.trace` as in section 2. A photo has texture everywhere instead of one flat shape on a flat
# background, so a content-seeking head has nothing single to lock on to. The second cell below draws the
# board of the cat's first tile and prints, per head, the median entropy on the cat next to the one on the
# shape-world picture: compare the free heads' numbers.
# </details>
#
# <details><summary>Answer 3</summary>
#
# The pool is a `Resampler` with 256 queries of width 4096 reading 1664-wide patch vectors, so a
# `[1, 1024, 1664]` input gives `[1, 256, 4096]`. Its parameters are the queries, `kv_proj` (1664 → 4096, no
# bias), the packed q/k/v and output projections and two LayerNorms, counted as in section 6. The third cell
# builds it on the meta device and checks the shape and the hand count against `n_params`.
# </details>
#
# <details><summary>Answer 4</summary>
#
# Because `1 - x` and `1 - y` are fixed by `x` and `y`, `offset(x, y) = c + x u + y v` with
# `c = (P[2] + P[3]) / 2`, `u = (P[0] - P[2]) / 2`, `v = (P[1] - P[3]) / 2`: three vectors describe every
# offset (the 4 inputs `[x, y, 1 - x, 1 - y]` span only a 3-dimensional space). Four rows give the same family of
# functions, but a different parametrisation: the four inputs are all in `[0, 1]` and the left and right (top and
# bottom) edges are treated alike, so initialisation and weight decay act symmetrically on them, and SEED-X's
# code can keep one row per edge. The last cell checks the three-vector form on random positions and prints the
# rank of the inputs.
# </details>

# %%
board_heads = attn[view].reshape(rcfg.num_heads, 8, 8, 16, 16)
board_heads = board_heads / board_heads.amax(dim=(3, 4), keepdim=True)
fig, axes = plt.subplots(1, rcfg.num_heads, figsize=(2.2 * rcfg.num_heads, 2.4))
for h, ax in enumerate(axes):
    ax.imshow(board_heads[h].permute(0, 2, 1, 3).reshape(128, 128), cmap="magma", interpolation="nearest")
    ax.set_title(f"head {h}" + (" (place bias)" if rcfg.locality and h < n_local else " (free)"), fontsize=8)
    ax.axis("off")
plt.tight_layout()
plt.show()


def median_entropy(a):
    """Attention [heads, Q, K] -> median over queries of each head's entropy [heads], in nats."""
    return (-(a * a.clamp_min(1e-12).log()).sum(-1)).median(-1).values


shape_entropy = median_entropy(attn[view])
for h, e in enumerate(shape_entropy.tolist()):
    print(f"head {h}: median entropy {e:.2f} nats")
print("most local head (lowest median entropy):", int(shape_entropy.argmin()))

# %%
with seedx_lab.trace(model, capture=["input_resampler.attn"]) as cat_trace:
    cat_feats, cat_positions, cat_tiles = model.encode_image(cat)
    model.lvlm.image_embeddings(cat_feats, cat_positions)
cat_attn = cat_trace["input_resampler.attn"]                  # [views, heads, 64, 256]
cat_maps = cat_attn[0].mean(0).reshape(8, 8, 16, 16)
cat_maps = cat_maps / cat_maps.amax(dim=(2, 3), keepdim=True)
fig, (a0, a1) = plt.subplots(1, 2, figsize=(6, 3))
a0.imshow(cat_tiles.images[0], interpolation="nearest")
a0.set_title("cat, tile 0")
a1.imshow(cat_maps.permute(0, 2, 1, 3).reshape(128, 128), cmap="magma", interpolation="nearest")
a1.set_title("64 queries, mean over heads")
for ax in (a0, a1):
    ax.axis("off")
plt.tight_layout()
plt.show()
for h, (e_cat, e_shape) in enumerate(zip(median_entropy(cat_attn[0]).tolist(), shape_entropy.tolist())):
    print(f"head {h}: median entropy {e_cat:.2f} nats on the cat's tile 0, {e_shape:.2f} on the shape world's global view")

# %%
pool = Resampler(ViTConfig.published().pool_config(), device="meta")
with torch.no_grad():
    pooled = pool(torch.empty(1, 1024, 1664, device="meta"))
E_pool, W_vit = 4096, 1664
pool_by_hand = 256 * E_pool + W_vit * E_pool + (3 * E_pool * E_pool + 3 * E_pool) + (E_pool * E_pool + E_pool) + 2 * 2 * E_pool
print("published attention pool:", (1, 1024, 1664), "->", tuple(pooled.shape))
print(f"its parameters: {n_params(pool):,d} (by hand: {pool_by_hand:,d})")
assert tuple(pooled.shape) == (1, 256, 4096) and n_params(pool) == pool_by_hand

# %%
c3, u3, v3 = (P[2] + P[3]) / 2, (P[0] - P[2]) / 2, (P[1] - P[3]) / 2
xy = torch.rand(100, 2, generator=torch.Generator().manual_seed(0))
three = c3 + xy[:, :1] * u3 + xy[:, 1:] * v3                          # [100, llm_dim]
four = torch.stack([pos_offset(x, y) for x, y in xy.tolist()])
print(f"three-vector form against ([x, y, 1-x, 1-y] / 2) @ P on 100 random positions: max |diff| "
      f"{(three - four).abs().max():.1e}")
inputs = torch.cat([xy, 1 - xy], -1)
print("rank of the 100 x 4 input matrix [x, y, 1-x, 1-y]:", int(torch.linalg.matrix_rank(inputs)))

# %% [markdown]
# ## Build it yourself
# ### Exercise 2.1 · the resampler's cross-attention ★★★ (about 30 min)
# Write `resampler_forward(m, x)` for a `seedx_lab.resampler.Resampler` `m` and ViT features `x [B, K, kv_dim]`,
# returning `[B, Q, E]` — without calling `m(x)`. Read the parameters from `m`: `m.query`, `m.pos_embed`,
# `m.kv_proj`, `m.ln_q`, `m.ln_kv`, `m.key_positions(K)`, `m.attn.in_proj_weight` / `in_proj_bias` (rows
# q | k | v) and `m.attn.out_proj`. seedx-tiny's input resampler also has a place bias: when
# `m.config.locality > 0`, subtract `locality * m.place_distance(K)` from the scores of the first
# `m.config.local_heads` heads (all heads when it is `None`).
#
# <details><summary>Hint 1: what goes where</summary>
#
# Keys/values: `kv = ln_kv(kv_proj(x))`. Queries: `ln_q(query) + pos_embed`, the same for every sample.
# Keys get the positions, values do not: `k = kv + key_positions(K)`, `v = kv`.
# </details>
#
# <details><summary>Hint 2: heads</summary>
#
# After the projections, split the last dimension `E` into `(H, E // H)` and move the head axis before the
# token axis; scores are `q @ k^T / sqrt(E // H)`, softmax over the keys, then `@ v`, heads concatenated
# back, `out_proj`.
# </details>

# %%
import torch


def resampler_forward(m, x):
    """Resampler m, features x [B, K, kv_dim] -> [B, Q, E]."""
    # BEGIN SOLUTION: the resampler's cross-attention forward
    cfg = m.config
    B, K, _ = x.shape
    H, D = cfg.num_heads, cfg.embed_dim // cfg.num_heads
    kv = m.ln_kv(m.kv_proj(x))                                  # [B, K, E]
    q = m.ln_q(m.query) + m.pos_embed                           # [Q, E]
    k = kv + m.key_positions(K)                                 # [B, K, E]
    w_q, w_k, w_v = m.attn.in_proj_weight.chunk(3)
    b_q, b_k, b_v = m.attn.in_proj_bias.chunk(3)

    def heads(t):                                               # [..., T, E] -> [..., H, T, D]
        return t.unflatten(-1, (H, D)).transpose(-3, -2)

    q, k, v = heads(q @ w_q.T + b_q), heads(k @ w_k.T + b_k), heads(kv @ w_v.T + b_v)
    scores = q @ k.transpose(-1, -2) / D ** 0.5                 # [B, H, Q, K]
    if cfg.locality > 0:
        n_local = H if cfg.local_heads is None else cfg.local_heads
        bias = torch.zeros(H, 1, 1, device=x.device)
        bias[:n_local] = cfg.locality
        scores = scores - bias * m.place_distance(K, x.device)
    out = (scores.softmax(-1) @ v).transpose(1, 2).flatten(2)   # [B, Q, E]
    return m.attn.out_proj(out)
    # END SOLUTION


# %%
from seedx_lab.lab import checks

checks.check_resampler_forward(resampler_forward)

# %% [markdown]
# **Your resampler in the real pipeline.** Both LLM-side resamplers of seedx-tiny (input: ViT → LLM,
# output: LLM → de-tokenizer) now run your forward. The model describes a held-out picture and draws a
# held-out caption; the pixel judge checks the drawing.

# %%
checks.describe_with(model, seed=0, resampler_forward=resampler_forward)
run = checks.draw_with(model, seed=0, num_inference_steps=10, resampler_forward=resampler_forward)
run.result.resize((128, 128), Image.NEAREST)

# %% [markdown]
# ## What you should now know
# 1. The ViT turns each tile into 256 features; the input resampler's 64 learned queries gather them by cross-attention.
# 2. Keys get 2-D sin-cos positions, values do not; there is no residual or MLP inside the resampler.
# 3. You can write that cross-attention forward yourself, heads and place bias included.
