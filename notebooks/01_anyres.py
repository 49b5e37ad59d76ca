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
# # 01 · Any-resolution tiling
#
# **What this notebook teaches.** Before SEED-X's vision encoder sees a picture, the picture is cut
# into square tiles of 448 pixels. Which grid of tiles? SEED-X tries eight grids (`1x1 1x2 1x3 2x1 3x1
# 1x4 4x1 2x2`, written *columns x rows*), scores them with **two** rules, keeps the cheaper answer,
# *stretches* the image to it, cuts it row by row and finally appends the whole image shrunk to one
# tile (the *global view*). Each tile also gets a position: its centre, in (0, 1) coordinates.
#
# You will:
# 1. list the candidate resolutions;
# 2. run both rules on a real photo and see which grid wins;
# 3. look at the tiles and their positions;
# 4. find images on which the two rules disagree, and check the claim the seed analysis makes.

# %%
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %%
import matplotlib.pyplot as plt
import numpy as np
import skimage.data
from PIL import Image

from seedx_lab import anyres

# %% [markdown]
# ## 1. The candidate grids
# A grid `CxR` means `C*448` pixels wide and `R*448` pixels high.

# %%
for grid, (w, h) in zip(anyres.PINPOINTS, anyres.candidate_resolutions(448)):
    print(f"{grid}: {w} x {h}")

# %% [markdown]
# ## 2. Both rules on a photo
# `skimage.data.chelsea()` is a 451 x 300 photo of a cat (it ships with scikit-image, nothing is downloaded).
#
# * the **LLaVA-NeXT rule** shrinks or grows the photo to fit inside each candidate without changing its
#   shape, and keeps the candidate that shows the most real pixels (*effective resolution*), then the one
#   with the least empty space (*waste*);
# * the **aspect rule** keeps the candidate whose shape (height / width) is closest to the photo's, then
#   the one whose area is closest.
#
# SEED-X keeps whichever of the two answers has the smaller area.

# %%
photo = Image.fromarray(skimage.data.chelsea())
decision = anyres.choose_resolution(photo.size, base=448)
print("photo size (w, h):", decision.image_size)
print("LLaVA-NeXT rule picks:", decision.llava_choice)
print("aspect rule picks:    ", decision.aspect_choice)
print("SEED-X uses:          ", decision.chosen, "-> grid", "x".join(map(str, decision.grid)))

# %%
print(f"{'grid':>4} {'effective':>10} {'waste':>9} {'aspect diff':>12} {'area ratio':>11}")
for row in decision.table:
    print(f"{row['grid']:>4} {row['effective']:>10} {row['waste']:>9} {row['aspect_ratio_diff']:>12.3f} {row['area_ratio']:>11.3f}")

# %% [markdown]
# ## 3. The tiles
# `tile_image` returns the pixels `[n_tiles, 3, 448, 448]` (CLIP-normalised), the positions `[n_tiles, 2]`
# and the decision. The photo is stretched to the chosen resolution: look at the grid drawn on it.

# %%
tiles = anyres.tile_image(photo, base=448)
print("pixels:", tuple(tiles.pixels.shape), " positions:", tuple(tiles.positions.shape))
print(tiles.positions)

# %%
W, H = decision.chosen
stretched = photo.resize((W, H))
n = len(tiles)
fig, axes = plt.subplots(1, n + 1, figsize=(3 * (n + 1), 3))
axes[0].imshow(stretched)
for x in range(0, W + 1, 448):
    axes[0].axvline(x - 0.5, color="yellow", lw=2)
for y in range(0, H + 1, 448):
    axes[0].axhline(y - 0.5, color="yellow", lw=2)
for k, (px, py) in enumerate(tiles.positions[:-1].tolist()):
    axes[0].text(px * W, py * H, f"tile {k}\n({px:.2f}, {py:.2f})", color="yellow", ha="center", va="center")
axes[0].set_title(f"stretched to {W}x{H}")
for k, im in enumerate(tiles.images):
    axes[k + 1].imshow(im)
    axes[k + 1].set_title("global view" if k == n - 1 else f"tile {k}")
for ax in axes:
    ax.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. When do the rules disagree?
# Scan many image shapes and count the sizes where the two rules pick different grids.

# %%
rng = np.random.default_rng(0)
sizes = rng.integers(100, 2500, size=(2000, 2))
rows = []
for w, h in sizes:
    d = anyres.choose_resolution((int(w), int(h)), base=448)
    if d.llava_choice != d.aspect_choice:
        rows.append((int(w), int(h), d.llava_choice, d.aspect_choice, d.chosen))
print(f"the rules disagree on {len(rows)} of {len(sizes)} random sizes; first five:")
for r in rows[:5]:
    print("  size %s x %s: llava %s, aspect %s -> chosen %s" % r)

# %% [markdown]
# A picture helps: for each image shape (width, height) the colour says which grid SEED-X chooses.

# %%
ws = hs = np.arange(100, 2001, 25)
grid_names = list(anyres.PINPOINTS)
chosen = np.array([[grid_names.index("%dx%d" % anyres.choose_resolution((int(w), int(h)), 448).grid)
                    for w in ws] for h in hs])
fig, ax = plt.subplots(figsize=(6, 5))
im = ax.imshow(chosen, origin="lower", extent=[ws[0], ws[-1], hs[0], hs[-1]], cmap="tab10", vmin=0, vmax=9)
cbar = fig.colorbar(im, ax=ax, ticks=range(len(grid_names)))
cbar.ax.set_yticklabels(grid_names)
ax.set_xlabel("image width")
ax.set_ylabel("image height")
ax.set_title("grid chosen by SEED-X's any-res rule")
plt.show()

# %% [markdown]
# ## Checking the claim
# The seed analysis says (claim 10): *any-res picks a grid and splits the image into 448 tiles with
# per-tile positions*. The published code adds detail: the grid is the smaller-area choice of two rules,
# the image is stretched, and positions are normalised tile centres with the global view at (0.5, 0.5).
# The cell below fails on the cat photo if the grid is not the smaller-area choice, if the tile count is not
# the grid's plus one global view, or if a position lies outside (0, 1) or the global view is not at
# (0.5, 0.5). Stretching is what the picture of section 3 shows; the claims ledger (notebook 13, claim 10)
# measures it, and checks the grid choice against `transformers` on 500 random sizes.

# %%
llava_area = decision.llava_choice[0] * decision.llava_choice[1]
aspect_area = decision.aspect_choice[0] * decision.aspect_choice[1]
assert decision.chosen[0] * decision.chosen[1] == min(llava_area, aspect_area)
C, R = decision.grid
assert tiles.pixels.shape == (C * R + 1, 3, 448, 448)
assert tiles.positions[-1].tolist() == [0.5, 0.5]
assert all(0 < v < 1 for v in tiles.positions.flatten().tolist())
assert len(rows) > 0, "the two rules never disagreed"
print("claim 10 holds, with the published details")

# %% [markdown]
# ## Exercises
# 1. Find the smallest square image for which SEED-X picks `2x2`. Why does the aspect rule hold it back?
# 2. Tile `skimage.data.rocket()` with `keep_ratio=True` and compare the tiles with the stretched ones.
# 3. The tiny model of this workbook uses 64-pixel tiles (`base=64`). Does the chosen grid depend on the base?
#    (Hint: try `choose_resolution(size, base=64)` for the sizes in `rows`.)
#
# <details><summary>Answer 1</summary>
#
# For a square image only `1x1` and `2x2` have its shape, so the aspect rule picks between them by area,
# and keeps `1x1` while the image's area is nearer to one tile's than to four tiles'. LLaVA-NeXT's rule wants
# `2x2` as soon as the image is larger than one tile (more pixels survive). SEED-X keeps the smaller area,
# so `1x1` wins until the aspect rule changes its mind. The cell below finds the side where that happens.
# </details>
#
# <details><summary>Answer 2</summary>
#
# With `keep_ratio=True` the rocket is shrunk to fit inside the chosen grid and the rest is black: shapes keep
# their proportions, but part of every tile along the long side is padding instead of picture. Stretching
# fills every pixel and distorts the shapes instead.
# </details>
#
# <details><summary>Answer 3</summary>
#
# The candidates are grids of `base`-pixel tiles, and the LLaVA-NeXT rule caps the effective resolution at the
# image's own area: with 64-pixel tiles most images are larger than every candidate, so the cap stops
# separating them and the rules may rank the candidates differently. Whether that changes any choice is
# counted by the second cell below: how many of the sizes in `rows` get another grid with `base=64`.
# </details>

# %%
side = next(n for n in range(449, 3000) if anyres.choose_resolution((n, n), 448).grid == (2, 2))
print(f"smallest square image that gets 2x2: {side} x {side}")

# %%
changed = sum(anyres.choose_resolution((w, h), 448).grid != anyres.choose_resolution((w, h), 64).grid
              for w, h, *_ in rows)
print(f"{changed} of {len(rows)} sizes get a different grid with base=64 than with base=448")

# %% [markdown]
# ## Build it yourself
# Two exercises: you write the grid choice and the tiler, a grader compares them with `seedx_lab.anyres`
# on many sizes, and then seedx-tiny describes a held-out picture with **your** tiler in place of its own.
# In the exercise copy (`seedx-lab exercises OUT`) the bodies below are stubs; here they hold a solution.
#
# ### Exercise 1.1 · the grid choice ★★ (about 15 min)
# Write `choose_grid(size, base)` returning the `(width, height)` SEED-X keeps for an image of `size = (w, h)`:
# the eight grids of `GRIDS` (columns, rows), both rules of section 2, the smaller-area answer.
#
# <details><summary>Hint</summary>
#
# Score each candidate with a key and let `max` / `min` pick: Python keeps the *first* best element, which
# is the "earlier candidate wins a tie" rule. LLaVA-NeXT's key is `(effective, -waste)` with
# `effective = min(int(w0*s) * int(h0*s), w0*h0)` and `s = min(w/w0, h/h0)`; the aspect rule's key is
# `(ratio of the two aspect ratios, ratio of the two areas)`, each written as `max(a, b) / min(a, b)`.
# </details>

# %%
GRIDS = ((1, 1), (1, 2), (1, 3), (2, 1), (3, 1), (1, 4), (4, 1), (2, 2))


def choose_grid(size, base):
    """(w, h) of an image -> the (width, height) of the chosen grid, in pixels."""
    # BEGIN SOLUTION: the grid choice (both rules, keep the smaller area)
    w0, h0 = size
    candidates = [(c * base, r * base) for c, r in GRIDS]

    def llava_key(wh):
        w, h = wh
        s = min(w / w0, h / h0)
        effective = min(int(w0 * s) * int(h0 * s), w0 * h0)
        return (effective, -(w * h - effective))

    def aspect_key(wh):
        w, h = wh
        ar, ar0, a, a0 = h / w, h0 / w0, w * h, w0 * h0
        return (max(ar, ar0) / min(ar, ar0), max(a, a0) / min(a, a0))

    llava, aspect = max(candidates, key=llava_key), min(candidates, key=aspect_key)
    return aspect if llava[0] * llava[1] > aspect[0] * aspect[1] else llava
    # END SOLUTION


# %%
from seedx_lab.lab import checks

checks.check_grid_choice(choose_grid)

# %% [markdown]
# ### Exercise 1.2 · tiles and their positions ★★ (about 20 min)
# Write `tile(image, base)` returning `(pixels [n, 3, base, base], positions [n, 2])`: stretch the PIL image to
# the chosen grid, cut it row by row, append the whole image resized to one tile, and give each view its
# normalised centre (the global view at `(0.5, 0.5)`). Turn a tile into a tensor with
# `seedx_lab.images.to_tensor` (it also applies the CLIP normalisation the ViT expects).
#
# <details><summary>Hint</summary>
#
# Resize with `Image.BICUBIC` (both the stretch and the global view). Tile `(col, row)` is the crop
# `(col*base, row*base, (col+1)*base, (row+1)*base)` and its centre is `((col + .5) / C, (row + .5) / R)`;
# loop over rows outside, columns inside.
# </details>

# %%
import torch
from PIL import Image

from seedx_lab.images import to_tensor


def tile(image, base):
    """PIL image -> (pixels [C*R + 1, 3, base, base], positions [C*R + 1, 2])."""
    # BEGIN SOLUTION: the tiler (stretch, cut row by row, global view last, tile centres)
    W, H = choose_grid(image.size, base)
    C, R = W // base, H // base
    big = image.resize((W, H), Image.BICUBIC)
    crops = [big.crop((x, y, x + base, y + base)) for y in range(0, H, base) for x in range(0, W, base)]
    crops.append(image.resize((base, base), Image.BICUBIC))
    positions = [((c + 0.5) / C, (r + 0.5) / R) for r in range(R) for c in range(C)] + [(0.5, 0.5)]
    return torch.stack([to_tensor(im) for im in crops]), torch.tensor(positions)
    # END SOLUTION


# %%
checks.check_tiling(tile)

# %% [markdown]
# **Your tiler in the real pipeline.** seedx-tiny describes two held-out shape-world pictures (the line
# gives each one's size: wide, tall or square) twice: once as shipped, once with `tile` in place of
# `anyres.tile_image`. The line printed says whether the description is exact and whether it equals the
# untouched model's.

# %%
import seedx_lab

model = seedx_lab.load("seedx-tiny", device=DEVICE)
for seed in (1, 2):
    checks.describe_with(model, seed=seed, tiling=tile)

# %% [markdown]
# ## What you should now know
# 1. SEED-X tiles an image on the smaller-area answer of two grid rules (LLaVA-NeXT's and the aspect rule), stretching, not padding.
# 2. Tiles come row by row, then a global view; each view carries its normalised centre as a position.
# 3. You can write the grid choice and the tiler yourself and check them against `seedx_lab.anyres`.
