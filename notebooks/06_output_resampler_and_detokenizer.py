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
# # 06 · From hidden states to pixels: the output resampler and the de-tokenizer
#
# **What this notebook teaches.** Notebook 05 ended with 64 vectors: the LLM's last-layer hidden states at
# the 64 image-token positions of a generated block. They are not a picture yet. Two more stages make one:
#
# ```
# 64 hidden states [64, LLM width]
#   -> output resampler: 64 learned queries attend to them     -> 64 "ViT-like" features [64, ViT width]
#   -> de-tokenizer adapter (a Perceiver resampler)            -> the two conditions SDXL expects:
#        encoder_hidden_states [64, 768 + 1280]  (SDXL's text-encoder outputs, normally)
#        text_embeds [1280] + time_ids [6]       (SDXL's pooled text and size/crop conditioning)
#   -> UNet + Euler sampler, starting from random noise       -> latents
#   -> VAE decoder                                            -> image
# ```
#
# The LLM is trained so that the output resampler's 64 features match the features the ViT would give the
# target image; the de-tokenizer is trained separately to draw an image from such features. seedx-tiny has
# the same architecture at toy widths (64 x 64 pixels, 16 x 16 latents).
#
# You will:
# 1. run the output resampler and check **claim #2** (the seed analysis says 64 -> 256 features);
# 2. see where its 64 queries look;
# 3. look at the adapter's conditions, in seedx-tiny and in the published widths;
# 4. watch the Euler loop turn noise into a picture;
# 5. check **claim #7** from the other side: where SEED-X's images get their variety;
# 6. measure picture quality against the number of diffusion steps (**claim #12**).

# %%
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch

import seedx_lab
from seedx_lab import judge as J
from seedx_lab import widgets
from seedx_lab import world as W
from seedx_lab.detokenizer import DetokenizerConfig, ResamplerXLV2
from seedx_lab.lvlm import pool_targets
from seedx_lab.resampler import Resampler, ResamplerConfig
from seedx_lab.training.data import image_to_unit
from seedx_lab.images import normalize

warnings.filterwarnings("ignore", category=FutureWarning)   # a transformers deprecation notice, not ours
torch.manual_seed(0)
plt.rcParams["figure.dpi"] = 72
plt.rcParams["image.interpolation"] = "nearest"      # show the real pixels (and keep the notebook small)
model = seedx_lab.load("seedx-tiny", device=DEVICE)
lvlm, tid = model.lvlm, model.token_ids
vit_dim, llm_dim = model.config.vit.output_dim, model.config.llm.hidden_size
print(f"LLM width {llm_dim}, ViT width {vit_dim}, image {model.config.detok.image_size} px, "
      f"default diffusion steps {model.config.num_inference_steps}")


def block_for(caption):
    """Greedy generation of caption<img>: the GeneratedImage (hidden [64, llm], features [64, vit])."""
    ids = torch.tensor([model.encode_ids(caption + "<img>")])
    return lvlm.generate(ids, max_new_tokens=65).images[0][0]


@torch.no_grad()
def vit_features(images):
    """64 x 64 pictures -> the ViT's 256 features each [N, 256, vit], as the training targets were made."""
    return model.vit(normalize(torch.stack([image_to_unit(im) for im in images])))


def show_row(images, titles, size=1.9, suptitle=None):
    fig, axes = plt.subplots(1, len(images), figsize=(size * len(images), size + 0.4))
    for ax, im, title in zip(np.atleast_1d(axes), images, titles):
        ax.imshow(im)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    plt.tight_layout()
    plt.show()


# %% [markdown]
# ## 1. The output resampler: 64 in, 64 out (claim #2)
# A held-out caption (its shape-colour-position combination never appeared in training) goes through the
# LLM with `<img>` appended. A `seedx_lab.trace` records the output resampler's attention and output.

# %%
sample = W.caption_image_sample(1, "test")
caption = sample.caption
with seedx_lab.trace(model, capture=["output_resampler.*"]) as t:
    blk = block_for(caption)
print("caption:", caption)
print("hidden states at the 64 image tokens:", tuple(blk.hidden.shape))
print("output resampler attention:          ", tuple(t["output_resampler.attn"].shape), "(images, heads, queries, keys)")
print("output resampler output (features):   ", tuple(t["output_resampler.out"].shape))

# %% [markdown]
# The seed analysis says the output resampler *expands* the 64 hidden states to 256 ViT-like features, one
# per ViT token. The published code says otherwise: the output resampler has 64 queries, and the regression
# target is the ViT's 256 features of the target image **average-pooled by 4 consecutive tokens** (1-D, in
# raster order) down to 64. The de-tokenizer reads those 64.
#
# The same check on the published widths (LLaMA-13B 5120 -> ViT 4096), built on PyTorch's `meta` device:
# shapes only, no memory.

# %%
pub_cfg = ResamplerConfig.published_output()
pub_out = Resampler(pub_cfg, device="meta")
with torch.no_grad():
    pub_feats = pub_out(torch.empty(1, 64, 5120, device="meta"))
print("published output resampler: [1, 64, 5120] ->", tuple(pub_feats.shape))

vit_feats = vit_features([sample.image])                    # the true image's ViT features [1, 256, vit]
target = pool_targets(vit_feats, "1d")                       # [1, 64, vit]
print("ViT features of the true image:", tuple(vit_feats.shape), "-> regression target:", tuple(target.shape))

# %%
assert tuple(blk.features.shape) == (64, vit_dim) and lvlm.output_resampler.config.num_queries == 64
assert tuple(pub_feats.shape) == (1, 64, 4096) and pub_cfg.num_queries == 64
assert torch.allclose(target, vit_feats.reshape(1, 64, 4, vit_dim).mean(2), atol=1e-6)
assert blk.features.shape[0] != vit_feats.shape[1]
print("claim #2 is false: the output resampler maps 64 hidden states to 64 features (not 256); "
      "the target is 256 ViT tokens averaged 4 at a time")

# %% [markdown]
# Which ViT tokens does each of the 64 targets average? The ViT's 256 tokens sit on a 16 x 16 grid over
# the image, in raster order, so "4 consecutive tokens" is a **1 x 4 horizontal strip**, not a 2 x 2 square.
# Left: the strips, one colour per target. Right: how close the generated features are to the target of
# their own caption, compared with the targets of other captions (cosine similarity, 16 test captions).

# %%
strips = (np.arange(256) // 4).reshape(16, 16)
N_CAPTIONS = 16
captions = [W.caption_image_sample(s, "test") for s in range(N_CAPTIONS)]
gen_feats = torch.stack([block_for(c.caption).features for c in captions])              # [N, 64, vit]
true_feats = vit_features([c.image for c in captions])                                # [N, 256, vit]
targets = pool_targets(true_feats, "1d")                                                # [N, 64, vit]
g = torch.nn.functional.normalize(gen_feats.flatten(1), dim=-1)
tt = torch.nn.functional.normalize(targets.flatten(1), dim=-1)
cos = (g @ tt.T).numpy()                                                                # [N, N]
own, other = np.diag(cos).mean(), cos[~np.eye(N_CAPTIONS, dtype=bool)].mean()

fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
axes[0].imshow(strips % 20, cmap="tab20", vmin=0, vmax=19, interpolation="nearest")
for k in (0, 1, 4, 63):
    r, c = divmod(4 * k, 16)
    axes[0].text(c + 1.5, r, str(k), ha="center", va="center", fontsize=8)
axes[0].set_title("16 x 16 ViT tokens -> 64 targets\n(1 x 4 strips, numbered)", fontsize=9)
axes[0].axis("off")
im = axes[1].imshow(cos, cmap="viridis")
axes[1].set_xlabel("target of caption j")
axes[1].set_ylabel("generated from caption i")
axes[1].set_title(f"cosine(generated, target): own {own:.2f}, other {other:.2f}", fontsize=9)
fig.colorbar(im, ax=axes[1], fraction=0.046)
plt.tight_layout()
plt.show()

# %%
assert own > other
print(f"the generated features are closer to their own caption's target ({own:.2f}) than to others' ({other:.2f})")

# %% [markdown]
# ## 2. Where the output resampler's queries look
# Each of the 64 queries takes a weighted average of the 64 hidden states (its attention row sums to 1).
# Left: the attention of every query (rows) over every hidden state (columns), averaged over the heads.
# Right: the weights of four queries, drawn on the 8 x 8 grid of the image-token positions.

# %%
attn = t["output_resampler.attn"][0]                          # [heads, 64, 64]
mean_attn = attn.mean(0).numpy()
fig, axes = plt.subplots(1, 5, figsize=(12, 2.8), gridspec_kw=dict(width_ratios=[2.2, 1, 1, 1, 1]))
axes[0].imshow(mean_attn, cmap="magma", aspect="auto")
axes[0].set_xlabel("hidden state <img_k>")
axes[0].set_ylabel("query")
axes[0].set_title("attention, mean over heads", fontsize=9)
for ax, q in zip(axes[1:], (0, 9, 36, 63)):
    ax.imshow(mean_attn[q].reshape(8, 8), cmap="magma")
    ax.set_title(f"query {q}", fontsize=9)
    ax.axis("off")
plt.tight_layout()
plt.show()
entropy = -(attn * attn.clamp_min(1e-12).log()).sum(-1).mean().item()
print(f"mean attention entropy {entropy:.2f} nats (uniform over 64 would be {np.log(64):.2f})")

# %%
assert torch.allclose(attn.sum(-1), torch.ones(()), atol=1e-5)
print("every query's attention is a probability distribution over the 64 hidden states")

# %% [markdown]
# ## 3. The de-tokenizer's conditions
# SDXL was built to be conditioned by two text encoders. SEED-X swaps them for an **adapter**: a
# Perceiver-style resampler with 64 learned latents that read the 64 features and produce exactly what the
# UNet expects from the text encoders:
# * `encoder_hidden_states` — one vector per latent, as wide as CLIP-L (768) and OpenCLIP-G (1280) together;
#   the UNet's cross-attention layers read them;
# * `text_embeds` — one pooled vector (OpenCLIP-G's width, 1280), added to the timestep embedding;
# * `time_ids` — SDXL's six size and crop numbers (original height and width, crop top and left, target
#   height and width), which do not depend on the features at all.

# %%
ehs, text_embeds, time_ids = model.detok.encode_condition(blk.features[None])
dcfg = model.config.detok
print("seedx-tiny:")
print("  encoder_hidden_states", tuple(ehs.shape), f"= {dcfg.output1_dim} + {dcfg.output2_dim} wide")
print("  text_embeds          ", tuple(text_embeds.shape))
print("  time_ids             ", tuple(time_ids.shape), time_ids[0].tolist())

pub = DetokenizerConfig.published()
pub_adapter = ResamplerXLV2(pub, device="meta")
with torch.no_grad():
    pub_ehs, pub_pooled = pub_adapter(torch.empty(1, 64, pub.embedding_dim, device="meta"))
print("published SEED-X (shapes only, meta device):")
print("  features [1, 64, 4096] -> encoder_hidden_states", tuple(pub_ehs.shape),
      f"= {pub.output1_dim} + {pub.output2_dim}; text_embeds", tuple(pub_pooled.shape))
print(f"  UNet cross_attention_dim {pub.unet['cross_attention_dim']}; added embedding input "
      f"{pub.unet['projection_class_embeddings_input_dim']} = {pub.pooled_dim} + 6 x {pub.unet['addition_time_embed_dim']}")

# %%
assert tuple(ehs.shape) == (1, 64, dcfg.cross_attention_dim) == (1, 64, model.detok.unet.config.cross_attention_dim)
assert tuple(text_embeds.shape) == (1, dcfg.pooled_dim) and tuple(time_ids.shape) == (1, 6)
assert tuple(pub_ehs.shape) == (1, 64, 2048) and tuple(pub_pooled.shape) == (1, 1280)
assert pub.unet["projection_class_embeddings_input_dim"] == 1280 + 6 * 256
print("the adapter produces SDXL's conditions: 64 x (768 + 1280), a pooled 1280 and 6 time ids")

# %% [markdown]
# ## 4. The Euler loop
# Diffusion starts from pure noise in the latent space (16 x 16 x 4 here, 128 x 128 x 4 for SDXL at
# 1024 px). At each step the UNet predicts the noise, given the conditions, and the Euler sampler removes a
# share of it. `widgets.diffusion_scrubber` decodes the latents after every step with the VAE, and also the
# clean image each step *predicts* (latents minus the remaining noise). Drag the slider in JupyterLab.

# %%
scrub = widgets.diffusion_scrubber(model, caption, num_inference_steps=10, seed=0)
scrub.set(step=3)
scrub

# %% [markdown]
# Five of the ten steps side by side: the top row is what the latents look like, the bottom row what the
# model currently believes the final picture to be. Does the picture settle before the noise is gone, and at
# which step?

# %%
shown = [0, 2, 4, 6, 9]
fig, axes = plt.subplots(2, len(shown), figsize=(1.2 * len(shown), 2.7))
for col, k in enumerate(shown):
    axes[0, col].imshow(scrub.decoded[k])
    axes[0, col].set_title(f"step {k + 1}\nsigma {scrub.sigmas[k + 1]:.2f}", fontsize=7)
    axes[1, col].imshow(scrub.x0[k])
for ax in axes.flat:
    ax.axis("off")
axes[0, 0].text(-8, 32, "latents", rotation=90, va="center", ha="right", fontsize=8)
axes[1, 0].text(-8, 32, "prediction", rotation=90, va="center", ha="right", fontsize=8)
plt.show()

# %%
assert scrub.n_steps == 10 and scrub.sigmas[-1] == 0.0 and np.all(np.diff(scrub.sigmas) <= 0)
final_latents = model.detok.sample(blk.features[None], num_inference_steps=10, guidance_scale=model.config.guidance_scale,
                                   generator=torch.Generator().manual_seed(0), output_type="latent")
assert torch.allclose(scrub.latents[-1], final_latents[0], atol=1e-5)
print("10 Euler steps from sigma", round(float(scrub.sigmas[0]), 2), "down to 0; the scrubber's last latents are the sample's")

# %% [markdown]
# ## 5. Claim #7, the other half: variety comes from the noise
# Notebook 05 showed that, under SEED-X's greedy decoding, the 64 features are a function of the prompt.
# The only random choice left is the de-tokenizer's starting noise. Same features, different seeds: how far
# apart are the pictures, in pixels and in what the pixel judge reads? A difference of a few 255ths is noise
# nobody sees; variety that matters changes what is drawn. Same seed twice must give the same picture, pixel
# for pixel. (Notebook 13's claim #7 measures this on several captions, with an interval.)

# %%
seeds = [0, 1, 2, 3]
pics = [model.draw(blk.features, num_inference_steps=20, seed=s) for s in seeds]
again = model.draw(blk.features, num_inference_steps=20, seed=0)
arrays = [np.asarray(p, dtype=np.int16) for p in pics]
verdicts = [J.score_image(p, caption)["all"] for p in pics]
show_row(pics + [again], [f"seed {s}\njudge: {'ok' if v else 'wrong'}" for s, v in zip(seeds, verdicts)] + ["seed 0 again"],
         suptitle=f"one set of features, five draws: '{caption}'")
diffs = [np.abs(arrays[0] - a).mean() for a in arrays[1:]]
print("mean absolute pixel difference to seed 0:", [f"{d:.1f}" for d in diffs])
print("seed 0 twice identical:", np.array_equal(np.asarray(again), np.asarray(pics[0])))

# %%
assert np.array_equal(np.asarray(again), np.asarray(pics[0]))
readings = [sorted((d.shape, d.colour, d.position) for d in J.judge_image(p)) for p in pics]
changed = sum(r != readings[0] for r in readings[1:])
print(f"seeds 1-3 against seed 0: mean pixel difference {np.mean(diffs):.1f} of 255; the judge reads a different "
      f"picture (shapes, colours, places) for {changed} of {len(readings) - 1}")

# %% [markdown]
# ## 6. Claim #12 — quality against the number of steps
# SEED-X samples with 50 Euler steps at 1024 px (and classifier-free guidance 7.5). How many steps does the
# de-tokenizer really need? seedx-tiny is small enough to measure: the 16 held-out captions of section 1,
# drawn with 2, 5, 10 and 25 steps (same seed, the model's guidance `model.config.guidance_scale`: the tiny
# de-tokenizer was trained with a share of its conditions dropped, so it has an unconditional branch to
# guide against). The **pixel judge**
# (`judge.score_image`) finds the objects in the pixels and checks the caption's shape, colour and position
# one by one; `all` needs all three. Two references: the judge on the true images (the ceiling of the
# judge itself), and the de-tokenizer fed the *true* image's pooled ViT features instead of the LLM's (the
# ceiling of the de-tokenizer, whatever the LLM does).

# %%
STEPS = [2, 5, 10, 25]
KEYS = ("shape", "colour", "position", "all")
results, grid = {}, {}
for n in STEPS:
    imgs = model.draw(gen_feats, num_inference_steps=n, guidance_scale=3.0, seed=0)      # one batch
    scores = [J.score_image(im, c.caption) for im, c in zip(imgs, captions)]
    results[n] = {k: float(np.mean([s[k] for s in scores])) for k in KEYS}
    results[n]["attributes"] = float(np.mean([results[n][k] for k in KEYS[:3]]))
    grid[n] = imgs[:4]
truth = [J.score_image(c.image, c.caption)["all"] for c in captions]
true_imgs = model.draw(targets, num_inference_steps=25, guidance_scale=3.0, seed=0)   # same noise per caption as imgs
from_true = [J.score_image(im, c.caption) for im, c in zip(true_imgs, captions)]
ref = {k: float(np.mean([s[k] for s in from_true])) for k in KEYS}
ref["attributes"] = float(np.mean([ref[k] for k in KEYS[:3]]))
print(f"{'steps':>5} {'shape':>6} {'colour':>7} {'position':>9} {'all':>6} {'mean of 3':>10}")
for n in STEPS:
    r = results[n]
    print(f"{n:>5} {r['shape']:>6.2f} {r['colour']:>7.2f} {r['position']:>9.2f} {r['all']:>6.2f} {r['attributes']:>10.2f}")
print(f"{25:>5} {ref['shape']:>6.2f} {ref['colour']:>7.2f} {ref['position']:>9.2f} {ref['all']:>6.2f} "
      f"{ref['attributes']:>10.2f}   (de-tokenizer fed the true images' pooled ViT features)")
print(f"{'':>5} {'':>6} {'':>7} {'':>9} {np.mean(truth):>6.2f}   (judge on the rendered true images)")

# %%
fig = plt.figure(figsize=(9, 3.0))
ax = fig.add_axes([0.06, 0.15, 0.3, 0.75])
for k, style in (("attributes", "o-"), ("all", "s-"), ("shape", "^--"), ("colour", "v--"), ("position", "d--")):
    ax.plot(STEPS, [results[n][k] for n in STEPS], style, label="mean of 3" if k == "attributes" else k,
            lw=2 if k in ("attributes", "all") else 1)
ax.axhline(np.mean(truth), color="grey", lw=1, ls=":", label="true images, all")
ax.set_xscale("log")
ax.minorticks_off()
ax.set_xticks(STEPS, [str(n) for n in STEPS])
ax.set_ylim(-0.02, 1.05)
ax.set_xlabel("Euler steps")
ax.set_ylabel(f"judge accuracy ({N_CAPTIONS} captions)")
ax.legend(fontsize=7)
for i, n in enumerate(STEPS):
    for j in range(2):
        a = fig.add_axes([0.42 + 0.145 * i, 0.5 - 0.42 * j, 0.13, 0.38])
        a.imshow(grid[n][j])
        a.axis("off")
        if j == 0:
            a.set_title(f"{n} steps", fontsize=9)
plt.show()
print("rows of pictures:", *[c.caption for c in captions[:2]], sep="\n  ")

# %% [markdown]
# Read the plot with the pictures next to it. What do later steps change in the pictures: the layout, or
# the sharpness and brightness? By how many captions of the 16 does each metric move between the fewest
# and the most steps, and in which direction (printed below)? (This de-tokenizer was trained mostly on the
# noisy end of the schedule, where the layout is decided; see `train.py`.) Compare the `all` line with the
# row fed the true features: the gap between them is the LLM's share, the gap from that row to the true
# images the de-tokenizer's own (a small UNet trained for minutes on a CPU). The published count of 50 steps
# is measured, with 1 step and intervals, in notebook 13 (`seedx-lab claims --only 12`), and on 100 held-out
# captions in `docs/experiments.md` (section "Claim 12").

# %%
n_cap = len(captions)
for k in KEYS:
    vals = [round(results[n][k] * n_cap) for n in STEPS]
    print(f"{k:>8}: {' '.join(f'{v:>2}' for v in vals)} of {n_cap} at {STEPS} steps; spread {max(vals) - min(vals)} "
          f"caption(s); {STEPS[-1]} steps vs {STEPS[0]}: {vals[-1] - vals[0]:+d}")
gap_llm = ref["all"] - results[STEPS[-1]]["all"]
print(f"whole-caption accuracy at {STEPS[-1]} steps: {results[STEPS[-1]]['all']:.2f} from the LLM's features, "
      f"{ref['all']:.2f} from the true features ({'below' if gap_llm > 0 else 'not below'} them), "
      f"{np.mean(truth):.2f} for the true images")
assert all(0 <= results[n][k] <= 1 for n in STEPS for k in KEYS)

# %% [markdown]
# ## Exercises
# 1. Replace `pool_targets(vit_feats, "1d")` by `"2d"` (2 x 2 squares). Is the generated image's features'
#    similarity to that target higher or lower than to the 1-D one? What does that tell you about how the
#    model was trained?
# 2. seedx-tiny draws with `guidance_scale=3.0` by default (`model.config.guidance_scale`); the unconditional
#    branch reads all-zero features. Draw the same features with `guidance_scale=1.0` (no guidance). How much
#    of the judge's accuracy at 10 steps does guidance buy? Measure it with `evaluate.image_accuracy` on 100
#    validation captions, with and without guidance, and give both numbers with their n.
# 3. Draw `targets` (the true pooled features) and `gen_feats` (the LLM's) side by side for the same seed.
#    Where do the pictures differ? Compare with the cosine similarities of section 1.
# 4. In the scrubber, from which step on does the predicted clean image stop changing its colour? Its shape?
#
# <details><summary>Answer 1</summary>
#
# Compare, over the 16 captions of section 1, the per-token cosine similarity of the generated features with
# the 1-D target (strips of 4) and with the 2-D target (2 x 2 squares) of the true picture. The two targets
# overlap a lot (both average four neighbouring cells), so both similarities are high; the model was fitted to
# the 1-D one, and if it learned that target and not just "something near these cells", the 1-D similarity
# should be the higher. The first cell below prints both and counts for how many captions the 1-D is closer.
# </details>
#
# <details><summary>Answer 2</summary>
#
# With `guidance_scale <= 1` the sampler uses the conditional prediction alone; at 3.0 it pushes each step away
# from the unconditional (all-zero features) prediction. The second cell measures the judge's accuracy at 10
# steps both ways on the same validation captions, features and seed, and prints each as k of n with a 95 %
# Wilson interval. To keep this notebook quick it uses `N_GUIDE = 32` captions and draws them in one batch
# (`evaluate.image_accuracy` runs the whole pipeline per caption); set `N_GUIDE = 100` for the count the
# exercise asks for. Read the difference together with the intervals: with n in the tens, a few captions
# either way are within the noise.
# </details>
#
# <details><summary>Answer 3</summary>
#
# Section 6 already drew both at 25 steps with seed 0, in batches of the same order, so each caption got the
# same starting noise both ways and any difference comes from the features.
# The true pooled features were made from the picture itself, so what they give is the de-tokenizer's best; the
# LLM's features were predicted from the caption alone. The third cell shows four captions both ways and prints,
# per caption, the judge's verdict for each and the cosine similarity of the LLM's features with the target
# (the diagonal of the matrix in section 1): look for whether the captions whose features are further from
# the target are the ones drawn differently.
# </details>
#
# <details><summary>Answer 4</summary>
#
# Let the pixel judge read the scrubber's predicted clean image after every step (`scrub.x0`) and find the
# last step at which its reading of the colour, and of the shape, changes. The last cell prints the readings
# step by step and the two steps.
# </details>

# %%
from seedx_lab.lab.claims import wilson

cos_1d = torch.nn.functional.cosine_similarity(gen_feats, pool_targets(true_feats, "1d"), dim=-1).mean(-1)   # [N]
cos_2d = torch.nn.functional.cosine_similarity(gen_feats, pool_targets(true_feats, "2d"), dim=-1).mean(-1)
print(f"mean per-token cosine with the 1-D target {cos_1d.mean():.3f}, with the 2-D target {cos_2d.mean():.3f}; "
      f"1-D closer for {int((cos_1d > cos_2d).sum())} of {len(cos_1d)} captions")

# %%
N_GUIDE = 32
guide_caps = [W.caption_image_sample(s, "validation") for s in range(N_GUIDE)]
guide_feats = torch.stack([block_for(c.caption).features for c in guide_caps])
for scale in (model.config.guidance_scale, 1.0):
    drawn = model.draw(guide_feats, num_inference_steps=10, guidance_scale=scale, seed=0)
    k = sum(J.score_image(im, c.caption)["all"] for im, c in zip(drawn, guide_caps))
    lo, hi = wilson(k, N_GUIDE)
    print(f"guidance {scale:.1f}, 10 steps: {k} of {N_GUIDE} validation captions drawn right "
          f"({k / N_GUIDE:.2f}, 95 % interval {lo:.2f}-{hi:.2f})")

# %%
pairs = list(true_imgs[:4]) + list(grid[STEPS[-1]][:4])     # section 6's drawings at 25 steps, seed 0
show_row(pairs, [f"true {i}" for i in range(4)] + [f"LLM {i}" for i in range(4)], size=1.4,
         suptitle="left four: the true pooled features; right four: the LLM's; same seed")
for i, c in enumerate(captions[:4]):
    print(f"{c.caption:45s} judge true {J.score_image(pairs[i], c.caption)['all']!s:5} "
          f"LLM {J.score_image(pairs[4 + i], c.caption)['all']!s:5} cosine(LLM, target) {cos[i, i]:.2f}")

# %%
def main_reading(im):
    found = sorted(J.judge_image(im), key=lambda d: -d.area)
    return (found[0].shape, found[0].colour) if found else (None, None)


readings_x0 = [main_reading(x) for x in scrub.x0]
for k, (shape, colour) in enumerate(readings_x0):
    print(f"step {k + 1:2d}: predicted clean image reads as {colour} {shape}")
for what, i in (("colour", 1), ("shape", 0)):
    last_change = max([k + 1 for k in range(1, len(readings_x0)) if readings_x0[k][i] != readings_x0[k - 1][i]],
                      default=1)
    print(f"the {what} reading no longer changes from step {last_change} on")

# %% [markdown]
# ## Build it yourself
# ### Exercise 6.1 · the 64 hidden states before `</img>` ★ (about 10 min)
# Write `pick(tokens, hidden, token_ids)`: `tokens [N]` are generated ids, `hidden [N, D]` the last-layer
# hidden state at each of them. For every `</img>` whose `n = len(token_ids.img)` predecessors are all image
# tokens, take the hidden states at those `n` positions; return `[n_blocks, n, D]` (`[0, n, D]` when none).
#
# <details><summary>Hint</summary>
#
# The `<img>` that opens the block may sit in the prompt (a caption prompt ends in it), so find the blocks
# by their `</img>`, not by their `<img>`.
# </details>

# %%
import torch


def pick(tokens, hidden, token_ids):
    """tokens [N], hidden [N, D] -> [n_blocks, n, D]."""
    # BEGIN SOLUTION: the pick of the hidden states before </img>
    n, ids, img = len(token_ids.img), tokens.tolist(), set(token_ids.img)
    blocks = [hidden[i - n: i] for i, t in enumerate(ids)
              if t == token_ids.eoi and i >= n and all(x in img for x in ids[i - n: i])]
    return torch.stack(blocks) if blocks else hidden.new_zeros((0, n, hidden.shape[-1]))
    # END SOLUTION


# %%
from seedx_lab.lab import checks

checks.check_hidden_state_pick(pick)

# %% [markdown]
# ### Exercise 6.2 · the output resampler call ★ (about 5 min)
# Write `image_features(lvlm, tokens, hidden)`: the picked states through `lvlm.output_resampler`, giving
# the `[n_blocks, 64, vit_dim]` features the de-tokenizer reads. The grader compares them with those
# `lvlm.generate` hands over.

# %%
def image_features(lvlm, tokens, hidden):
    """tokens [N], hidden [N, D] -> features [n_blocks, 64, vit_dim]."""
    # BEGIN SOLUTION: the output resampler on the picked hidden states
    return lvlm.output_resampler(pick(tokens, hidden, lvlm.token_ids))
    # END SOLUTION


# %%
checks.check_image_features(image_features)

# %% [markdown]
# ### Exercise 6.3 · the Euler loop with classifier-free guidance ★★★ (about 40 min)
# Write `euler_sample(detok, features, steps, guidance, generator)`: features `[B, 64, D]` → images
# `[B, 3, H, W]` in `[0, 1]`, as `detok.sample(..., output_type="pt")` but with the loop written by you.
# Use `detok.encode_condition(features)` for the UNet's conditions (`encoder_hidden_states`, pooled
# `text_embeds`, `time_ids`), all-zero features for the unconditional branch, `detok.scheduler` only for
# its schedule (`set_timesteps`, `timesteps`, `sigmas`, `init_noise_sigma`), `detok.unet` and
# `detok.decode_latents`. Draw the starting noise with
# `torch.randn(B, detok.unet.config.in_channels, side, side, generator=generator)`,
# `side = detok.config.image_size // detok.vae_scale_factor`.
#
# <details><summary>Hint 1: one Euler step</summary>
#
# At noise level `s = sigmas[i]` the UNet sees `x / sqrt(s² + 1)` and the timestep `timesteps[i]`. seedx-tiny
# predicts *v*; the clean estimate is `x0 = x / (s² + 1) - v · s / sqrt(s² + 1)`. The step follows the
# straight line from `x` towards `x0`: `x ← x + (x - x0) / s · (sigmas[i+1] - s)`.
# </details>
#
# <details><summary>Hint 2: guidance</summary>
#
# When `guidance > 1`, run both branches in one batch (unconditional first), split the prediction in two
# and mix: `v = v_uncond + guidance · (v_cond - v_uncond)`.
# </details>

# %%
def euler_sample(detok, features, steps, guidance, generator):
    """features [B, 64, D] -> images [B, 3, H, W] in [0, 1]."""
    # BEGIN SOLUTION: the Euler denoising loop with classifier-free guidance
    sch = detok.scheduler
    ehs, pooled, time_ids = detok.encode_condition(features)
    if guidance > 1:
        ehs_u, pooled_u, _ = detok.encode_condition(torch.zeros_like(features))
        ehs, pooled, time_ids = torch.cat([ehs_u, ehs]), torch.cat([pooled_u, pooled]), torch.cat([time_ids, time_ids])
    sch.set_timesteps(steps)
    side = detok.config.image_size // detok.vae_scale_factor
    x = torch.randn(features.shape[0], detok.unet.config.in_channels, side, side, generator=generator)
    x = x.to(detok.device) * sch.init_noise_sigma
    for i, t in enumerate(sch.timesteps):
        s, s_next = sch.sigmas[i], sch.sigmas[i + 1]
        model_in = x / (s ** 2 + 1) ** 0.5
        if guidance > 1:
            model_in = torch.cat([model_in, model_in])
        v = detok.unet(model_in, t, encoder_hidden_states=ehs,
                       added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
        if guidance > 1:
            v_uncond, v_cond = v.chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        x0 = x / (s ** 2 + 1) - v * s / (s ** 2 + 1) ** 0.5
        x = x + (x - x0) / s * (s_next - s)
    return detok.decode_latents(x)
    # END SOLUTION


# %%
checks.check_euler_loop(euler_sample)

# %% [markdown]
# **Your pieces in the real pipeline.** seedx-tiny draws held-out captions with your pick, your output
# resampler call and your sampler in place of its own; the pixel judge looks at the pictures.

# %%
runs = [checks.draw_with(model, seed=seed, hidden_state_pick=pick, euler_loop=euler_sample) for seed in (0, 1, 2)]
fig, axes = plt.subplots(1, len(runs), figsize=(2.2 * len(runs), 2.4))
for ax, r in zip(axes, runs):
    ax.imshow(r.result)
    ax.set_title(r.prompt, fontsize=7)
    ax.axis("off")
plt.show()

# %% [markdown]
# ## What you should now know
# 1. The last-layer hidden states at the 64 image tokens go through the output resampler to become de-tokenizer features.
# 2. The de-tokenizer is an SDXL-shaped UNet denoising latents with an Euler sampler and classifier-free guidance, then a VAE decodes them.
# 3. You can write the pick and the Euler loop and get the model's pictures back.
