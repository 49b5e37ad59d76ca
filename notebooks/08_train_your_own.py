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
# # 08 · Train your own seedx-tiny
#
# **What this notebook teaches.** SEED-X is trained in three stages, and so is seedx-tiny:
#
# 1. **visual encoder** — here trained *supervised*: each of the ViT's 256 output tokens must reproduce the
#    pixels of its own cell, and small heads must name the colour and shape found at each position;
# 2. **de-tokenizer** — first the VAE learns to compress and restore pictures, then the adapter + UNet learn to
#    paint a picture from the frozen encoder's features (pooled to 64, as the LLM will deliver them);
# 3. **LLM + input and output resamplers** — next-token loss on text and on `<img>`, plus a regression loss that
#    pulls the output resampler's 64 features towards the picture's pooled ViT features.
#
# You will run a **quick** version of all three stages (its time is printed when it ends), watch the losses
# fall, and compare its drawings with the shipped model, which ran the same code with many more steps
# (the command is in the README: `seedx-lab train`).

# %%
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %%
import matplotlib.pyplot as plt
import torch

import seedx_lab
from seedx_lab import judge, world
from seedx_lab.training import TrainConfig, read_log, train

plt.rcParams["figure.dpi"] = 72
cfg = TrainConfig.quick_run()
print({k: getattr(cfg, k) for k in ("vit_steps", "vae_steps", "unet_steps", "llm_steps", "seed", "device")})

# %% [markdown]
# ## 1. Run the three stages
# Progress bars show each stage. The run is seeded; it keeps a resumable state in `runs/seedx-quick`, so if you
# interrupt it, running the cell again continues where it stopped (`fresh=True` here starts over).

# %%
# NBVAL_IGNORE_OUTPUT
out = train(cfg, fresh=True)

# %% [markdown]
# ## 2. The losses
# Every stage wrote its loss to `train_log.csv`. The cell below checks that each stage's loss went down —
# it fails if training did not learn anything.

# %%
# NBVAL_IGNORE_OUTPUT
# (float sums depend on the CPU's thread count, so the exact losses may differ from run to run; the
#  assertion below does not)
rows = read_log(f"{cfg.work}/train_log.csv")
stages = ["vit", "vae", "unet", "llm"]
fig, axes = plt.subplots(1, 4, figsize=(12, 2.6))
for ax, st in zip(axes, stages):
    r = [x for x in rows if x["stage"] == st]
    ax.plot([x["step"] for x in r], [x["loss"] for x in r])
    ax.set_title(f"stage {st}")
    ax.set_xlabel("step")
axes[0].set_ylabel("loss")
plt.tight_layout()
plt.show()
for st in stages:
    losses = [x["loss"] for x in rows if x["stage"] == st]
    k = max(1, len(losses) // 4)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    print(f"{st:>4}: first {k} logged steps {first:.3f} -> last {k} {last:.3f}")
    assert last < first, f"stage {st} did not learn"
print("every stage's loss fell")

# %% [markdown]
# ## 3. Quick model vs shipped model
# The same captions, drawn by the quick model and by the shipped one.

# %%
# NBVAL_IGNORE_OUTPUT
quick = seedx_lab.load(out, device=DEVICE)
shipped = seedx_lab.load("seedx-tiny", device=DEVICE)
captions = [world.caption_image_sample(s).caption for s in range(3)]
fig, axes = plt.subplots(2, 3, figsize=(7, 5))
scores = {"quick": 0, "shipped": 0}
for j, c in enumerate(captions):
    for i, (name, m) in enumerate([("quick", quick), ("shipped", shipped)]):
        img = m.generate_image(c, seed=0, num_inference_steps=10).image
        scores[name] += judge.score_image(img, c)["all"]
        axes[i, j].imshow(img)
        axes[i, j].set_title(f"{name}: {c[:28]}", fontsize=7)
        axes[i, j].axis("off")
plt.tight_layout()
plt.show()
print("judged right:", scores)

# %% [markdown]
# ## 4. The full run's log
# The shipped checkpoint keeps the log of the run that made it.

# %%
full = read_log(seedx_lab.loading.resolve("seedx-tiny") / "train_log.csv")
fig, axes = plt.subplots(1, 4, figsize=(12, 2.6))
for ax, st in zip(axes, stages):
    r = [x for x in full if x["stage"] == st]
    ax.plot([x["step"] for x in r], [x["loss"] for x in r])
    ax.set_yscale("log")
    ax.set_title(f"full run: {st}")
plt.tight_layout()
plt.show()
print("full run steps per stage:", {st: int(max(x["step"] for x in full if x["stage"] == st)) + 1 for st in stages})

# %% [markdown]
# ## 5. When each stage ran
# Stages b and c both start from the finished ViT and never read each other, so on a CPU the trainer runs them
# side by side, in two processes of half the threads each (`TrainConfig.parallel`; `seedx-lab train --sequential`
# keeps one process). The bet is that models this small use a second thread poorly, so that two one-thread
# processes get more done per second than one process with both threads; `benchmarks/lanes.py` measures it
# (its ratios are in `docs/experiments.md`). Every row of the log
# carries the seconds since the run started, so the quick run's own log shows the two lanes overlapping, and so
# does the shipped checkpoint's (it was trained side by side too, by `seedx-lab train --fresh`).

# %%
def stage_spans(log):
    """(first, last) seconds of each stage's rows, and the overlap in seconds of stage b (vae, unet) and c (llm)."""
    spans = {st: (min(x["elapsed_s"] for x in log if x["stage"] == st),
                  max(x["elapsed_s"] for x in log if x["stage"] == st)) for st in stages}
    stage_b = (spans["vae"][0], spans["unet"][1])          # one lane: the VAE, then the adapter + UNet
    return spans, min(stage_b[1], spans["llm"][1]) - max(stage_b[0], spans["llm"][0])


def show_timeline(spans, title):
    """One bar per stage, from its first to its last logged second."""
    fig, ax = plt.subplots(figsize=(8, 2.2))
    for i, st in enumerate(stages):
        a, b = spans[st]
        ax.barh(i, b - a, left=a, color=f"C{i}")
        ax.text(b, i, f"  {st}: {a:.0f}-{b:.0f} s", va="center", fontsize=8)
    ax.set_yticks(range(len(stages)), [f"stage {st}" for st in stages])
    ax.invert_yaxis()
    ax.set_xlabel(f"seconds since the {title} started")
    ax.set_xlim(0, max(b for _, b in spans.values()) * 1.35)
    plt.tight_layout()
    plt.show()


# %%
# NBVAL_IGNORE_OUTPUT
# (the quick run's seconds depend on the machine and its load)
spans, overlap = stage_spans(rows)
show_timeline(spans, "quick run")
print(f"quick run: stage b (vae, unet) and stage c (llm) overlap for {overlap:.0f} s of its "
      f"{max(b for _, b in spans.values()):.0f} s")
assert overlap > 0, "stages b and c ran one after the other"

# %%
full_spans, full_overlap = stage_spans(full)
show_timeline(full_spans, "shipped checkpoint's run")
print(f"shipped run: stages b and c overlap for {full_overlap / 60:.1f} of its "
      f"{max(b for _, b in full_spans.values()) / 60:.1f} min")
assert full_overlap > 0.5 * (full_spans["llm"][1] - full_spans["llm"][0])

# %% [markdown]
# ## Exercises
# 1. Double `llm_steps` in the quick config. Which losses improve, and does the drawing get better?
# 2. Train with `target_pool="2d"` in the model config (see notebook 04). Does the de-tokenizer care?
# 3. Interrupt the training cell halfway, run it again without `fresh=True`, and check in `train_log.csv` that it
#    resumed rather than restarted.

# %% [markdown]
# ## What you should now know
# 1. seedx-tiny trains in three stages: ViT and VAE first, then the de-tokenizer on ViT features, then the LLM with both losses.
# 2. Training is resumable and its losses are logged, so a short run can be compared with the shipped one.
# 3. The same code builds the shipped checkpoint; only step counts differ.
