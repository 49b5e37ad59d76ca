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
# # 04 · One training step: the forward pass and the two losses
#
# **What this notebook teaches.** SEED-X's language model learns two things at once:
#
# * **to write text** (and to decide when an image starts): the usual next-token cross-entropy, called
#   `lm_loss`, on the labelled positions of notebook 03;
# * **to write images**: the last-layer hidden states at the 64 image-token positions of an image to be
#   generated go through the **output resampler**, and the result is pulled towards features of the
#   real image with a mean-squared error, `rec_loss`.
#
# The total is `lm_loss_scale * lm_loss + rec_loss_scale * rec_loss` with the published scales 1 and 6.
#
# You will:
# 1. build a small training batch with the three kinds of sample (caption -> image, image -> answer,
#    an interleaved story) and look at it;
# 2. run the model's forward pass and read the losses;
# 3. recompute both losses by hand and check that they match;
# 4. check **claim 2**: the output resampler gives 64 features per image, not 256;
# 5. see how the regression target is made from the image's 256 ViT features (1-D average pooling of 4
#    neighbours in raster order) and measure whether the trained model's features match that target
#    better than a 2-D (2 x 2) pooling.

# %%
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

import seedx_lab
from seedx_lab import tokens as T
from seedx_lab import world as W
from seedx_lab.lvlm import pool_targets
from seedx_lab.resampler import Resampler, ResamplerConfig
from seedx_lab.images import normalize
from seedx_lab.sequences import caption_pieces, collate, comprehension_pieces, encode_pieces, story_pieces
from seedx_lab.training.data import image_to_unit

warnings.filterwarnings("ignore", category=FutureWarning)
torch.manual_seed(0)
plt.rcParams["figure.dpi"] = 72
model = seedx_lab.load("seedx-tiny", device=DEVICE)
lv, ids_of = model.lvlm, model.token_ids
print("lm_loss_scale", lv.lm_loss_scale, "| rec_loss_scale", lv.rec_loss_scale, "| mse", lv.mse,
      "| vit_down", lv.vit_down, "| target pooling", lv.target_pool)

# %% [markdown]
# ## 1. A training batch
# The ViT turns each picture into 256 features (notebook 02). An image *to generate* needs them as the
# regression target; an image *to read* needs them (one set per any-res view) as input. The
# `seedx_lab.sequences` helpers describe a sample as pieces, `encode_pieces` turns pieces into ids and
# labels, and `collate` pads the samples into one batch of keyword arguments for the model.

# %%
@torch.no_grad()
def vit_features(image):
    """One 64 x 64 picture -> its 256 ViT features [256, vit_dim] (no tiling: it is already one tile)."""
    return model.vit(normalize(image_to_unit(image)[None]))[0]


cap = W.caption_image_sample(1)
qa = W.comprehension_sample(3)
story = next(s for s in (W.story_sample(k) for k in range(100))
             if sum(not isinstance(g, str) for g in s.segments) >= 2)
story_images = [W.render(g) for g in story.segments if not isinstance(g, str)]
qa_feats, qa_pos, _ = model.encode_image(qa.image)

examples = [
    encode_pieces(model, caption_pieces(cap.caption, vit_features(cap.image))),
    encode_pieces(model, comprehension_pieces(qa_feats, qa_pos, qa.question, qa.answer)),
    encode_pieces(model, story_pieces(story.segments, torch.stack([vit_features(im) for im in story_images]))),
]
batch = collate(model, examples)
for k, v in batch.items():
    print(f"{k:16s}", tuple(v.shape), v.dtype)

# %% [markdown]
# The batch as a picture: one row per sample, one column per position. Green positions carry an LM
# label; orange are image slots whose embeddings are replaced by the input resampler's output (images
# to *read*); blue are image slots whose hidden states are regressed onto an image (images to
# *write*); the red dot marks each labelled `<img>`.

# %%
ids, labels = batch["input_ids"], batch["labels"]
canvas = np.zeros(ids.shape, dtype=int)                  # 0 = text without a label
canvas[(labels != -100).numpy()] = 1
canvas[batch["ids_cmp_mask"].numpy()] = 2
canvas[batch["ids_gen_mask"].numpy()] = 3
canvas[(batch["attention_mask"] == 0).numpy()] = 4
cmap = ListedColormap(["#cccccc", "#2ca02c", "#ff7f0e", "#1f77b4", "white"])
fig, ax = plt.subplots(figsize=(10, 2.2))
ax.imshow(canvas, aspect="auto", cmap=cmap, vmin=0, vmax=4, interpolation="nearest")
rows, cols = ((ids == ids_of.boi) & (labels == ids_of.boi)).nonzero(as_tuple=True)
ax.scatter(cols, rows, color="red", s=25)
ax.set_yticks(range(3))
ax.set_yticklabels(["caption -> image", "comprehension", "story"])
ax.set_xlabel("position")
ax.legend(handles=[Patch(color=cmap(k), label=n) for k, n in enumerate(
    ["no label", "LM label", "image read (input resampler)", "image written (rec loss)"])],
    ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.45))
plt.show()

# %% [markdown]
# ## 2. The forward pass
# `model.lvlm(**batch)` embeds the tokens, writes the read images in, runs LLaMA, and computes both
# losses. We only evaluate (no gradient), but this is exactly the number a training step would
# minimise.

# %%
with torch.no_grad():
    out = lv(**batch)
lm_loss, rec_loss, total = out["lm_loss"].item(), out["rec_loss"].item(), out["loss"].item()
print(f"lm_loss  = {lm_loss:.4f}")
print(f"rec_loss = {rec_loss:.4f}")
print(f"total    = {lv.lm_loss_scale:g} * {lm_loss:.4f} + {lv.rec_loss_scale:g} * {rec_loss:.4f} = {total:.4f}")
assert lv.lm_loss_scale == 1.0 and lv.rec_loss_scale == 6.0 and lv.mse
assert abs(total - (1.0 * lm_loss + 6.0 * rec_loss)) < 1e-5
print("the total is lm_loss + 6 x rec_loss, the published weighting")

# %% [markdown]
# ## 3. Both losses by hand
# **LM loss.** Position `i` predicts the token at `i + 1`. We take the log-softmax of the logits, read off
# the log-probability of each labelled next token, and average the negatives over labelled positions.

# %%
logits = out["logits"]                                   # [B, T, V]
logp = logits[:, :-1].float().log_softmax(-1)            # predictions for positions 1..T-1
target_ids = labels[:, 1:]
has_label = target_ids != -100
nll = -logp.gather(-1, target_ids.clamp(min=0)[..., None])[..., 0]      # [B, T-1]
my_lm = nll[has_label].mean().item()
is_boi = has_label & (target_ids == ids_of.boi)
print(f"labelled positions: {int(has_label.sum())}, of which <img> targets: {int(is_boi.sum())}")
print(f"by hand: lm_loss = {my_lm:.4f}  (mean NLL on text {nll[has_label & ~is_boi].mean():.4f}, "
      f"on <img> {nll[is_boi].mean():.4f})")
assert abs(my_lm - lm_loss) < 1e-5
print("the LM loss is the mean next-token cross-entropy over labelled positions, <img> included")

# %% [markdown]
# **Regression loss.** We redo the whole image path without calling `lv.forward`:
#
# 1. token embeddings; at the read-image slots, the input resampler's output plus the tile-position
#    offset (notebook 02);
# 2. LLaMA over those embeddings; keep the last layer's hidden states (after the final norm);
# 3. take the 64 hidden states of each image to write, in order, and run the output resampler;
# 4. target: the image's 256 ViT features, averaged in groups of 4 consecutive tokens;
# 5. mean squared error over all numbers.

# %%
with torch.no_grad():
    emb = lv.llm.get_input_embeddings()(ids).clone()
    views = lv.input_resampler(batch["image_features"])                         # [views, 64, llm_dim]
    p = batch["patch_positions"]
    views = views + ((torch.cat([p, 1 - p], -1) / 2) @ lv.patch_pos_embed)[:, None, :]
    emb[batch["ids_cmp_mask"]] = views.reshape(-1, views.shape[-1])
    run = lv.llm(inputs_embeds=emb, attention_mask=batch["attention_mask"], output_hidden_states=True)
    last = run.hidden_states[-1]                                                # [B, T, llm_dim]
    n_img = batch["target_features"].shape[0]
    gen_hidden = last[batch["ids_gen_mask"]].reshape(n_img, 64, -1)             # [N, 64, llm_dim]
    my_rec = lv.output_resampler(gen_hidden)                                    # [N, 64, vit_dim]
    vit = batch["target_features"]                                              # [N, 256, vit_dim]
    my_target = vit.reshape(n_img, 64, 4, vit.shape[-1]).mean(2)                # [N, 64, vit_dim]
    my_rec_loss = ((my_rec - my_target) ** 2).mean().item()
print(f"images to write in the batch: {n_img}; by hand: rec_loss = {my_rec_loss:.4f}")
assert torch.allclose(run.logits, logits, atol=1e-4)
assert torch.allclose(my_rec, out["rec"], atol=1e-5) and torch.allclose(my_target, out["target"], atol=1e-6)
assert abs(my_rec_loss - rec_loss) < 1e-5
print("the regression loss is the MSE between the output resampler's features and the 1-D pooled ViT features")

# %% [markdown]
# ## 4. Claim 2: the output resampler gives 64 features, not 256
# The seed analysis says (claim 2): *the output resampler expands 64 hidden states to 256 ViT-like
# features*. The published configuration (`agent_seed_x.yaml`) gives the output resampler 64 queries
# (`grid_size: 8`), and the loss compares it with a 64-token target. We check the tiny model and the
# published configuration built on the `meta` device.

# %%
pub_out = Resampler(ResamplerConfig.published_output(), device="meta")
with torch.no_grad():
    pub_feats = pub_out(torch.empty(1, 64, 5120, device="meta"))
print("seedx-tiny output resampler:", tuple(gen_hidden.shape), "->", tuple(out["rec"].shape))
print("published output resampler: ", (1, 64, 5120), "->", tuple(pub_feats.shape))
assert tuple(out["rec"].shape) == (n_img, 64, model.config.vit.output_dim)
assert tuple(pub_feats.shape) == (1, 64, 4096) and ResamplerConfig.published_output().num_queries == 64
assert tuple(out["target"].shape) == (n_img, 64, model.config.vit.output_dim)
print("claim 2 is wrong as stated: 64 hidden states -> 64 ViT-like features (not 256); "
      "the 256 ViT tokens are pooled down to 64 to make the target")

# %% [markdown]
# ## 5. Which ViT cells feed each target token?
# The ViT's 256 tokens sit on a 16 x 16 grid in raster order (token `t` is row `t // 16`, column
# `t % 16`). The published code pools them with a **1-D** average over 4 consecutive tokens: target `k`
# is the mean of tokens `4k .. 4k+3`, a horizontal **strip of 4 cells in one row**. A **2-D** pooling
# would instead average **2 x 2 squares**. In both pictures each colour is one of the 64 target tokens;
# the numbers are the target index.

# %%
cell = torch.arange(256)
group_1d = (cell // 4).reshape(16, 16)
group_2d = ((cell // 16) // 2 * 8 + (cell % 16) // 2).reshape(16, 16)
rng = np.random.default_rng(0)
colours = plt.cm.tab20(np.arange(64) % 20)[rng.permutation(64)]


def draw_groups(ax, groups, title):
    ax.imshow(colours[groups.numpy()], interpolation="nearest")
    for k in range(64):
        r, c = (groups == k).nonzero(as_tuple=True)
        ax.text(c.float().mean(), r.float().mean(), str(k), ha="center", va="center", fontsize=6)
    g = groups.numpy()
    for r in range(16):
        for c in range(16):
            if c < 15 and g[r, c] != g[r, c + 1]:
                ax.plot([c + 0.5, c + 0.5], [r - 0.5, r + 0.5], color="black", lw=0.8)
            if r < 15 and g[r, c] != g[r + 1, c]:
                ax.plot([c - 0.5, c + 0.5], [r + 0.5, r + 0.5], color="black", lw=0.8)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
draw_groups(axes[0], group_1d, "1-D pooling (published): strips of 4")
draw_groups(axes[1], group_2d, "2-D pooling: 2 x 2 squares")
plt.tight_layout()
plt.show()

# %% [markdown]
# Both pictures as code, checked against the package's `pool_targets`:

# %%
pooled_1d = vit.reshape(n_img, 64, 4, -1).mean(2)
pooled_2d = vit.reshape(n_img, 8, 2, 8, 2, -1).mean((2, 4)).reshape(n_img, 64, -1)
assert torch.allclose(pooled_1d, pool_targets(vit, "1d"), atol=1e-6)
assert torch.allclose(pooled_2d, pool_targets(vit, "2d"), atol=1e-6)
assert all(len(set((group_1d == k).nonzero()[:, 0].tolist())) == 1 for k in range(64))
print("1-D target k = mean of ViT tokens 4k..4k+3 (always within one row); 2-D target = mean of a 2 x 2 square")

# %% [markdown]
# Note what the 1-D strips do to the layout: the 64 targets form **16 rows of 4 strips**, not an 8 x 8
# grid, while the output resampler's 64 queries carry 8 x 8 sin-cos positions. Query `(r, c)` of that
# 8 x 8 grid is asked to produce target `8r + c`, whose cells are in ViT row `2r + c // 4`: the query
# grid and the picture do not line up. Training does not care (every query has its own learned
# vector), but a 2 x 2 pooling would match the query grid.
#
# Which of the two targets does the trained seedx-tiny reproduce? It was trained with the 1-D target (as
# published); if training did what it asked, its output features are closer to the 1-D pooling. We measure it on 24 caption
# pictures the model was trained on and 24 from the held-out validation split: run the training
# sequence `{caption}<img>...</img>` through the model, take the output resampler's features, and
# compute the MSE against both poolings of the real picture's ViT features.

# %%
@torch.no_grad()
def rec_vs_targets(samples):
    feats = torch.stack([vit_features(s.image) for s in samples])
    b = collate(model, [encode_pieces(model, caption_pieces(s.caption, f)) for s, f in zip(samples, feats)])
    rec = lv(**b)["rec"]
    return rec, pool_targets(feats, "1d"), pool_targets(feats, "2d")


results = {}
for split in ("train", "validation"):
    rec, t1, t2 = rec_vs_targets([W.caption_image_sample(s, split) for s in range(24)])
    results[split] = (F.mse_loss(rec, t1).item(), F.mse_loss(rec, t2).item(),
                      ((rec - t1) ** 2).mean((1, 2)) < ((rec - t2) ** 2).mean((1, 2)),
                      F.mse_loss(t1.mean((0, 1), keepdim=True).expand_as(t1), t1).item())
    mse_1d, mse_2d, wins, base = results[split]
    print(f"{split:10s}: MSE vs 1-D target {mse_1d:.4f} | vs 2-D target {mse_2d:.4f} | "
          f"1-D closer for {int(wins.sum())}/24 pictures | predict-the-mean baseline {base:.4f}")

# %%
for split, (mse_1d, mse_2d, wins, base) in results.items():
    assert mse_1d < mse_2d, split
print(f"measured: the trained output resampler matches the 1-D (strip) pooling better than the 2-D (square) "
      f"one ({results['train'][0]:.4f} vs {results['train'][1]:.4f} on training pictures) — as it was trained")

# %% [markdown]
# Last, a consistency check that ties this notebook to generation: at inference, `generate_image` feeds
# `{caption}<img>`, forces the 64 image tokens and `</img>`, and hands the same hidden states to the
# output resampler. Since the forced tokens are exactly the training sequence's tokens, the features
# from generation equal those of the training forward pass.

# %%
with torch.no_grad():
    gen = lv.generate(torch.tensor([model.encode_ids(T.generation_prompt(cap.caption))]), max_new_tokens=65,
                      pad_token_id=model.tokenizer.pad_token_id)
gen_feats = gen.images[0][0].features
print("generated block complete:", gen.images[0][0].block.complete, "| features", tuple(gen_feats.shape))
assert torch.allclose(gen_feats, out["rec"][0], atol=1e-4)
print("generation and the training forward pass produce the same 64 features for the same caption")

# %% [markdown]
# ## Exercises
# 1. Set `lv.rec_loss_scale = 1.0` and rerun section 2. Which part of the total dominates now? Why might
#    SEED-X have weighted the regression by 6?
# 2. Switch the loss to cosine (`lv.mse = False`) and recompute `rec_loss` by hand with
#    `F.cosine_similarity`.
# 3. Compute the LM loss of the story row alone, once with and once without its `<img>` targets. How much
#    of the story's loss is about *when* to start an image?
# 4. Draw, for one picture, the per-token MSE of `rec` against the 1-D target as a 16 x 4 map (16 rows of
#    4 strips). Are some strips harder than others?
#
# <details><summary>Answer 1</summary>
#
# The two losses live on different scales: `lm_loss` is a cross-entropy in nats per token, `rec_loss` a mean
# squared difference of normalised features, which for a trained model is a small number. With equal weights
# the smaller term contributes little to the total and so to the gradient, and the LLM would be trained mostly
# for text. A weight of 6 is a way to give the image path a share of the gradient; the right weight depends on
# the feature scale, so it is a tuning choice of SEED-X, not a law. The first cell below recomputes the total
# with `rec_loss_scale = 1.0` and prints the share of each term in both weightings.
# </details>
#
# <details><summary>Answer 2</summary>
#
# The cosine loss compares directions only: `1 - cos(rec_i, target_i)` per token, averaged over the 64 tokens of
# every image. It ignores the features' length, which the de-tokenizer does see, which is one reason to prefer
# MSE. The second cell computes it by hand from `out["rec"]` and `out["target"]` and checks it against the model's
# forward with `lv.mse = False`.
# </details>
#
# <details><summary>Answer 3</summary>
#
# The story row's labelled positions are its text tokens plus one `<img>` per picture it holds. Dropping the
# `<img>` positions from the mean gives the text-only loss; the share of the row's summed NLL that sits on
# `<img>` targets is how much of the story's loss is about *when* to start an image. The third cell prints both.
# </details>
#
# <details><summary>Answer 4</summary>
#
# `rec` and the 1-D target are `[N, 64, vit_dim]`; the squared error averaged over the feature axis gives 64
# numbers per picture, and in the 1-D layout target `k` is strip `k % 4` of ViT row `k // 4`, so
# `reshape(16, 4)` draws them where they are in the picture. The last cell draws one picture's map next to
# the picture and the mean map over the 24 validation pictures of section 5, and prints how far apart the
# easiest and the hardest strip are on average. Compare the bright strips with where the shapes are.
# </details>

# %%
published_scale = lv.rec_loss_scale
try:
    lv.rec_loss_scale = 1.0
    with torch.no_grad():
        equal = lv(**batch)
finally:
    lv.rec_loss_scale = published_scale
for name, scale, o in (("published (x6)", published_scale, out), ("equal (x1)", 1.0, equal)):
    lm_part, rec_part = o["lm_loss"].item(), scale * o["rec_loss"].item()
    print(f"{name:15s}: total {o['loss'].item():.4f} = lm {lm_part:.4f} ({lm_part / (lm_part + rec_part):.0%}) "
          f"+ rec {rec_part:.4f} ({rec_part / (lm_part + rec_part):.0%})")

# %%
my_cos = (1 - F.cosine_similarity(out["rec"], out["target"], dim=-1)).mean().item()
try:
    lv.mse = False
    with torch.no_grad():
        cos_out = lv(**batch)
finally:
    lv.mse = True
print(f"cosine rec_loss by hand {my_cos:.5f} | from the model with mse=False {cos_out['rec_loss'].item():.5f}")
assert abs(my_cos - cos_out["rec_loss"].item()) < 1e-5

# %%
story_row = 2
text_only = has_label[story_row] & ~is_boi[story_row]
print(f"story row: {int(has_label[story_row].sum())} labelled positions, {int(is_boi[story_row].sum())} of them <img>")
print(f"LM loss with the <img> targets {nll[story_row][has_label[story_row]].mean():.4f}, "
      f"without {nll[story_row][text_only].mean():.4f}")
share = nll[story_row][is_boi[story_row]].sum() / nll[story_row][has_label[story_row]].sum()
print(f"share of the story's summed NLL on <img> targets: {share:.2e} "
      f"(mean NLL at an <img> target {nll[story_row][is_boi[story_row]].mean():.2e} nats)")

# %%
strip_err = ((rec - t1) ** 2).mean(-1).reshape(-1, 16, 4)          # [24, 16 rows, 4 strips], last split of section 5
fig, axes = plt.subplots(1, 3, figsize=(7, 3))
axes[0].imshow(W.caption_image_sample(0, "validation").image)
axes[0].set_title("validation picture 0")
for ax, m, title in ((axes[1], strip_err[0], "its strip MSE"), (axes[2], strip_err.mean(0), "mean of 24")):
    im = ax.imshow(m, cmap="viridis", aspect=0.25, interpolation="nearest")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8)
for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
plt.tight_layout()
plt.show()
mean_map = strip_err.mean(0)
print(f"mean strip MSE over 24 pictures: easiest {mean_map.min():.4f}, hardest {mean_map.max():.4f} "
      f"({mean_map.max() / mean_map.min():.1f} times as large), at ViT row {int(mean_map.argmax()) // 4}")

# %% [markdown]
# ## Build it yourself
# ### Exercise 4.1 · `inputs_embeds` with image blocks ★★ (about 20 min)
# Write `inputs_embeds(lvlm, input_ids, image_features, ids_cmp_mask, patch_positions)` returning the
# `[B, T, D]` tensor the LLM reads: the token embeddings, with the input resampler's 64 embeddings of each
# view written into that view's `<img_i>` slots (`ids_cmp_mask` marks them, views in order), each view's
# embeddings shifted by its tile position first. `image_features` may be `None` (a text-only prompt), and
# `patch_positions` may be `None` (no shift).
#
# <details><summary>Hint 1: the position shift</summary>
#
# A position `p = (x, y)` becomes the 4-vector `[x, y, 1-x, 1-y] / 2`, multiplied by the learned
# `[4, D]` matrix `lvlm.patch_pos_embed`; the resulting `[D]` vector is added to all 64 embeddings of the
# view (only when `lvlm.add_patch_pos`).
# </details>
#
# <details><summary>Hint 2: writing into the slots</summary>
#
# Boolean indexing `embeds[ids_cmp_mask] = ...` fills the marked positions in row-major order, so the
# `[N, 64, D]` image embeddings reshaped to `[N * 64, D]` land view by view. Clone the embeddings first:
# they come out of the embedding layer.
# </details>

# %%
import torch


def inputs_embeds(lvlm, input_ids, image_features, ids_cmp_mask, patch_positions):
    """ids [B, T] (+ ViT features [N, 256, vit_dim], mask [B, T], positions [N, 2]) -> [B, T, D]."""
    # BEGIN SOLUTION: inputs_embeds with the image embeddings in the <img_i> slots
    embeds = lvlm.llm.get_input_embeddings()(input_ids)
    if image_features is None:
        return embeds
    img = lvlm.input_resampler(image_features)                  # [N, 64, D]
    if patch_positions is not None and lvlm.add_patch_pos:
        p = patch_positions.to(img)
        img = img + (torch.cat([p, 1 - p], dim=-1) / 2 @ lvlm.patch_pos_embed)[:, None]
    embeds = embeds.clone()
    embeds[ids_cmp_mask] = img.reshape(-1, img.shape[-1]).to(embeds.dtype)
    return embeds
    # END SOLUTION


# %%
from seedx_lab.lab import checks

checks.check_inputs_embeds(inputs_embeds)

# %% [markdown]
# **Your embeddings in the real pipeline.** seedx-tiny describes held-out pictures reading your
# `inputs_embeds`.

# %%
for seed in (0, 1):
    checks.describe_with(model, seed=seed, inputs_embeds=inputs_embeds)

# %% [markdown]
# ## What you should now know
# 1. One forward pass gives two losses: next-token cross-entropy on text and a regression of the image tokens' hidden states onto ViT features.
# 2. `inputs_embeds` is the token embeddings with the resampled image embeddings written into the image slots, tile positions added.
# 3. Teacher forcing feeds the true sequence, so every position's prediction is trained in one pass.
