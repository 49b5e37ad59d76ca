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
# # 00 · A tour of SEED-X in one minute
#
# SEED-X is a single language model that can both **read** pictures and **draw** them. This notebook runs
# the whole pipeline once, end to end, on **seedx-tiny** — a small model with SEED-X's architecture that this
# project trained on a CPU, in a world of coloured shapes. You do not need to read any code first: run the
# cells from top to bottom and look at the pictures.
#
# What happens inside, in one line each:
#
# | stage | what it does |
# |---|---|
# | any-res tiling | cuts a picture into square tiles plus one shrunken copy of the whole picture |
# | vision encoder (ViT) | turns each tile into 256 feature vectors |
# | input resampler | squeezes those 256 vectors into 64, the "image words" the language model reads |
# | language model (LLaMA) | reads text and image words; writes text — and decides when a picture should start, by writing `<img>` |
# | forced image tokens | after `<img>`, the 64 tokens `<img_00000>…<img_00063>` and `</img>` are forced, one fixed block |
# | output resampler | maps the model's 64 hidden states at those tokens to 64 vectors that look like ViT features |
# | de-tokenizer | a small Stable-Diffusion-XL-style image generator paints a picture from those vectors |
#
# The later notebooks (01 – 09) open up each stage.

# %%
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %%
import time

import matplotlib.pyplot as plt
import numpy as np
import skimage.data
import torch
from PIL import Image

import seedx_lab
from seedx_lab import judge, widgets, world

plt.rcParams["figure.dpi"] = 72
torch.manual_seed(0)
started = time.perf_counter()
model = seedx_lab.load("seedx-tiny", device=DEVICE)
print("loaded seedx-tiny:", sum(p.numel() for p in model.parameters()) // 1000, "thousand parameters")

# %% [markdown]
# ## 1. A photo, tiled
# SEED-X reads big or oddly shaped pictures by cutting them into tiles (448 pixels in SEED-X, 64 in the tiny
# model). The viewer shows the grid chosen for a photo of a cat and the tiles it produces. In JupyterLab the
# drop-down lets you try the other grids.

# %%
cat = Image.fromarray(skimage.data.chelsea())
viewer = widgets.tiling_viewer(cat, base=448)
viewer

# %% [markdown]
# ## 2. A caption, drawn
# The prompt is the caption followed by `<img>`. The language model then produces the 64 forced image tokens,
# and the de-tokenizer paints the picture. A pixel-only judge (it never looks at the model) checks the result.

# %%
caption = "a big red circle on the left ."
result = model.generate_image(caption, seed=0)
verdict = judge.score_image(result.image, caption)
print("prompt:", result.prompt)
print("image tokens generated:", len(result.output.images[0][0].hidden), "| features for the painter:", tuple(result.features.shape))
print("judge:", {k: verdict[k] for k in ("shape", "colour", "position")})
assert len(result.output.images[0][0].hidden) == 64
fig, ax = plt.subplots(figsize=(2.5, 2.5))
ax.imshow(result.image)
ax.set_title(caption, fontsize=9)
ax.axis("off")
plt.show()

# %% [markdown]
# A few more, including combinations of shape, colour and place that the model **never saw** during training
# (the world keeps them aside as its test split):

# %%
samples = [world.caption_image_sample(s, "test") for s in range(4)]
fig, axes = plt.subplots(1, 4, figsize=(10, 2.8))
correct = 0
for ax, s in zip(axes, samples):
    img = model.generate_image(s.caption, seed=1).image
    ok = judge.score_image(img, s.caption)["all"]
    correct += ok
    ax.imshow(img)
    ax.set_title(("✓ " if ok else "✗ ") + s.caption.replace(" .", ""), fontsize=7)
    ax.axis("off")
plt.tight_layout()
plt.show()
print(f"{correct} of {len(samples)} held-out captions drawn right, according to the judge")

# %% [markdown]
# ## 3. An image, described
# To read a picture, the model sees its tiles and the global view as 64 image words each, followed by a
# question, in SEED-X-I's `[INST] … [/INST]` format.

# %%
sample = world.comprehension_sample(5, "test")
answer = model.describe(sample.image)
print("the model says:", answer)
print("the truth is:  ", sample.answer)
named = {(d["shape"], d["colour"], d["position"]) for d in world.parse_description(answer)}
print("the main object is named correctly:", sample.scene.objects[0].triple in named)
fig, ax = plt.subplots(figsize=(3, 3))
ax.imshow(sample.image)
ax.axis("off")
plt.show()

# %% [markdown]
# ## 4. A story with pictures — the model decides where they go
# Nothing in the prompt asks for a picture. The model writes text and, whenever it predicts `<img>`, a picture
# is drawn. In this world, pictures belong after phrases like "here it is :".

# %%
story = model.generate("let us draw a small blue square at the top . here it is :", max_new_tokens=200, max_images=3)
print(story.text.replace("<img> </img>", "<img>…</img>"))
print("pictures drawn:", len(story.images))
assert len(story.images) >= 1
panels = [seg for seg in story.segments if not isinstance(seg, str)]
fig, axes = plt.subplots(1, max(2, len(panels)), figsize=(3 * max(2, len(panels)), 3))
for ax in axes:
    ax.axis("off")
for ax, pic in zip(axes, panels):
    ax.imshow(pic)
plt.show()

# %%
# NBVAL_IGNORE_OUTPUT
print(f"the whole tour took {time.perf_counter() - started:.1f} s on this machine")

# %% [markdown]
# ## Where next
# * `01_anyres` — how the grid is chosen (two rules!)
# * `02_vit_and_input_resampler` — 256 → 64 and where each query looks
# * `03_tokens_and_prompts`, `04_forward_and_losses` — how training teaches the model to predict `<img>`
# * `05_forced_generation`, `06_output_resampler_and_detokenizer` — what is forced and where variety comes from
# * `07_boi_probing_and_interleaving` — when does the model want a picture?
# * `08_train_your_own`, `09_real_seedx_on_gpu`
#
# ## Exercises
# 1. Draw "a small purple star in the centre ." with several seeds. What changes between seeds, and what stays?
# 2. Describe an image you make yourself with `world.render(world.Scene(...))`. Can you confuse the model?
# 3. Start a story with "we make pictures today ." and nothing else. Does the model draw anything? What in its
#    training stories decides that? (Notebook 07, section 5, counts such prompts.)
#
# <details><summary>Answer 1</summary>
#
# Look at the two halves of the pipeline separately. The language model's part is forced: after `<img>` the
# 64 image tokens are fixed, so the hidden states, and the features the painter gets, cannot depend on the
# seed. The seed only picks the starting noise of the de-tokenizer, so every difference between the pictures
# comes from the de-tokenizer alone. The cell below draws the caption with three seeds, checks whether the
# features are equal, and lets the judge score each picture: the attributes it reads the same way for every
# seed are the ones the features pin down; an attribute that flips between seeds is left to the noise.
# </details>
#
# <details><summary>Answer 2</summary>
#
# seedx-tiny has only seen scenes the world's sampler makes: 1–3 shapes that do not overlap, on light
# backgrounds, in five named places. A scene outside that distribution is the easiest way to confuse it — for
# example two shapes of the same colour touching each other, or a shape sitting on the boundary between two
# places. The cell below renders such a scene and prints what the model says next to the world's own
# description of it; compare the two.
# </details>
#
# <details><summary>Answer 3</summary>
#
# In this world a picture follows a trigger phrase such as "here it is :", and nowhere else; a prompt without
# one gives the model no reason to write `<img>` at once. It can still write on, and a picture appears only if
# its own text leads it to `<img>`. The cell below prints the largest P(`<img>`) over the prompt itself, then
# lets the model continue and prints what it wrote, how many pictures were drawn and whether the text before
# its first `<img>` (if any) ends with one of the world's trigger phrases.
# </details>

# %%
star = "a small purple star in the centre ."
# 10 diffusion steps instead of the default 25: enough to see what the seed changes, and quicker
first, second = (model.generate_image(star, seed=s, num_inference_steps=10) for s in (0, 1))
print("features equal for seeds 0 and 1:", torch.equal(first.features, second.features))
pictures = [first.image, second.image, model.draw(first.features, seed=2, num_inference_steps=10)]
pixels = [np.asarray(p, dtype=float) for p in pictures]
print("mean |pixel difference| from seed 0:", [round(float(np.abs(p - pixels[0]).mean()), 1) for p in pixels[1:]])
for s, pic in enumerate(pictures):
    print(f"seed {s}: judge", {k: v for k, v in judge.score_image(pic, star).items() if k != "n_objects"})

# %%
mine = world.Scene(background=world.BACKGROUNDS["mint"], objects=[
    world.Obj("square", "green", "big", 0.5, 0.5), world.Obj("circle", "green", "small", 0.72, 0.5)])
print("the world says:", world.describe_scene(mine))
print("the model says:", model.describe(world.render(mine)))

# %%
from seedx_lab import probes

plain = "we make pictures today ."
print(f"largest P(<img>) over the prompt: {probes.boi_trace(model, plain).p_final.max():.4f}")
story = model.generate(plain, max_new_tokens=200, max_images=1, num_inference_steps=10)
print("the model writes:", story.text.replace("<img> </img>", "<img>…</img>"))
print("pictures drawn:", len(story.images))
before = story.text.split("<img>")[0] if "<img>" in story.text else None
print("text before its first <img> ends with a trigger phrase:", None if before is None else world.ends_with_trigger(before))

# %% [markdown]
# ## What you should now know
# 1. SeedX runs three tasks from one set of weights: caption → image, image → text, and text that opens pictures itself.
# 2. Every picture passes through 64 forced image tokens whose hidden states a de-tokenizer turns back into pixels.
# 3. seedx-tiny is small enough to trace on a laptop CPU; the later notebooks open each stage in turn.
