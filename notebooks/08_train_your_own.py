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
#
# Exercises 1 and 3 need more training runs; their answer cells below run only when you set
# `RUN_TRAINING_ANSWERS = True` (about two quick runs' worth of time), so that this notebook stays quick
# when it is tested. Exercise 2's cell always runs.
#
# <details><summary>Answer 1</summary>
#
# Doubling `llm_steps` only lengthens stage c (and its cosine schedule); the ViT, VAE and UNet are trained
# exactly as before, so their losses cannot change. What can change is the LLM's two losses and everything
# downstream of its features. The first cell below trains a second quick model with twice the LLM steps in
# its own folder and prints, for both runs, the mean of the last logged LLM losses and how many of 20 test
# captions each draws right (with the count, not just a rate: on n = 20 a few captions either way is noise).
# </details>
#
# <details><summary>Answer 2</summary>
#
# `target_pool` is a field of the *model* config (`SeedXConfig.target_pool`); the trainer uses it both for the
# de-tokenizer's training inputs (stage b) and for the LLM's regression target (stage c), so a real run with
# `"2d"` has to change the config that `training.build_model` creates. Before paying for that run, ask the
# shipped de-tokenizer directly: it was trained on 1-D features; give it the true pictures' features pooled
# both ways and let the judge read the results. If the pictures drawn from 2-D features are as good, the
# de-tokenizer does not care how the 64 features are laid out; if they are worse, it learned the strip
# layout. The second cell prints both counts with their n.
# </details>
#
# <details><summary>Answer 3</summary>
#
# A resumed run continues from the last checkpoint (every `ckpt_every` steps) and drops log rows written after
# it, so every step appears in `train_log.csv` once; a restart would begin again at step 0 and log the early
# steps twice. The last cell makes the interruption reproducible instead of relying on your timing: in a tiny
# run in a temporary folder it raises `KeyboardInterrupt` right after the first checkpoint of stage c, runs
# `train` again without `fresh=True`, and prints the LLM steps found in the log.
# </details>

# %%
RUN_TRAINING_ANSWERS = False

# %%
from seedx_lab import evaluate

if RUN_TRAINING_ANSWERS:
    longer = TrainConfig.quick_run(llm_steps=2 * cfg.llm_steps, out="runs/seedx-quick-llm2/model",
                                   work="runs/seedx-quick-llm2")
    for name, config, model_dir in (("quick", cfg, out), ("2 x llm_steps", longer, train(longer, fresh=True))):
        llm_rows = [x for x in read_log(f"{config.work}/train_log.csv") if x["stage"] == "llm"]
        k = max(1, len(llm_rows) // 4)
        right = evaluate.image_accuracy(seedx_lab.load(model_dir, device=DEVICE), range(20), num_inference_steps=10)
        print(f"{name:>14}: {config.llm_steps} LLM steps, mean of the last {k} logged LLM losses "
              f"{sum(x['loss'] for x in llm_rows[-k:]) / k:.3f}; {round(right * 20)} of 20 test captions drawn right")
else:
    print("skipped: set RUN_TRAINING_ANSWERS = True to train the second model")

# %%
from seedx_lab.images import normalize
from seedx_lab.lab.claims import wilson
from seedx_lab.lvlm import pool_targets
from seedx_lab.training.data import image_to_unit

pool_caps = [world.caption_image_sample(s, "test") for s in range(12)]
with torch.no_grad():
    units = torch.stack([image_to_unit(c.image) for c in pool_caps]).to(shipped.device)
    true_vit = shipped.vit(normalize(units))                                                    # [12, 256, vit]
for how in ("1d", "2d"):
    drawn = shipped.draw(pool_targets(true_vit, how), num_inference_steps=10, seed=0)
    k = sum(judge.score_image(im, c.caption)["all"] for im, c in zip(drawn, pool_caps))
    lo, hi = wilson(k, len(pool_caps))
    print(f"shipped de-tokenizer fed the true pictures' {how} pooled features: {k} of {len(pool_caps)} drawn right "
          f"(95 % interval {lo:.2f}-{hi:.2f})")

# %%
import tempfile

from seedx_lab.training import trainer as training_loop

if RUN_TRAINING_ANSWERS:
    scratch = tempfile.mkdtemp(prefix="seedx-resume-")
    tiny_cfg = TrainConfig.quick_run(vit_steps=2, vae_steps=2, unet_steps=2, llm_steps=6, ckpt_every=3, log_every=1,
                                     vit_batch=4, vae_batch=4, unet_batch=4, llm_batch=2, comprehension_batch=2,
                                     cache_size=16, comprehension_pool=8, story_pool=8, parallel=False,
                                     work=scratch, out=scratch + "/model")
    real_save = training_loop.Trainer._save_state

    def save_then_stop(self, stage, step, opt):
        real_save(self, stage, step, opt)
        if stage == "llm":                               # the first checkpoint inside stage c
            raise KeyboardInterrupt(f"interrupted after the checkpoint at LLM step {step}")

    training_loop.Trainer._save_state = save_then_stop
    try:
        train(tiny_cfg, fresh=True, progress=False)
    except KeyboardInterrupt as e:
        print("first run:", e)
    finally:
        training_loop.Trainer._save_state = real_save
    train(tiny_cfg, progress=False)                          # no fresh=True: resume
    steps = [int(x["step"]) for x in read_log(f"{scratch}/train_log.csv") if x["stage"] == "llm"]
    print(f"LLM steps in the log after the resume: {steps}; each once: {len(steps) == len(set(steps))}")
else:
    print("skipped: set RUN_TRAINING_ANSWERS = True to run the interrupted training")

# %% [markdown]
# ## What you should now know
# 1. seedx-tiny trains in three stages: ViT and VAE first, then the de-tokenizer on ViT features, then the LLM with both losses.
# 2. Training is resumable and its losses are logged, so a short run can be compared with the shipped one.
# 3. The same code builds the shipped checkpoint; only step counts differ.
