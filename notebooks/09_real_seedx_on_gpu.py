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
# # 09 · The real SEED-X, through the same classes
#
# **What this notebook teaches.** Everything so far ran on seedx-tiny. The published SEED-X (17 B
# parameters: LLaMA-2-13B, a 1.9 B Qwen-VL ViT, SDXL's 2.6 B UNet) is built from *the same classes*, so
# every lesson can be repeated on it — given a GPU and the weights. The release is not one checkpoint
# but six pieces that the published scripts assemble; here you will see what each piece holds, load
# them with a loader that checks every key and every shape before it copies a single weight, and then
# run the analyses of the earlier notebooks on the real model: a caption becomes an image, an image
# becomes a description, and the probes ask where SEED-X wants to start an image.
#
# You will:
# 1. check what this machine has (files, variables, GPU memory);
# 2. see the published file layout on a *stand-in*: a tiny model written in exactly that layout and
#    read back through the loader the real files go through;
# 3. load the real model (or keep the stand-in when it cannot be loaded);
# 4. generate an image from a caption, and look inside (forced tokens, output resampler);
# 5. describe an image, and look at where the input resampler's 64 queries look;
# 6. run the `<img>` probes: the logit lens and the `0.0` "blocking" of image tokens.
#
# Without a CUDA GPU or without the files every section runs on the stand-in, whose weights are
# random: its numbers and pictures mean nothing, they only show that the code path works. The text
# says which model ran.

# %%
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %%
# NBVAL_IGNORE_OUTPUT
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import skimage.data
import torch
from IPython.display import display
from PIL import Image

import seedx_lab
from seedx_lab.published import checkpoints as C
from seedx_lab import tokens as T
from seedx_lab.sequences import block_masks
from seedx_lab.model import SeedX, SeedXConfig

import warnings

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

transformers_logging.disable_progress_bar()
diffusers_logging.disable_progress_bar()
warnings.filterwarnings("ignore", category=FutureWarning)

try:                      # trace and probes are the instruments of the earlier notebooks
    from seedx_lab import probes
    from seedx_lab.lab.trace import estimate_bytes, estimate_shapes, trace
except ImportError as e:  # pragma: no cover - only while those modules are missing
    probes = trace = estimate_bytes = estimate_shapes = None
    print("seedx_lab.trace / seedx_lab.probes not available:", e)

# %% [markdown]
# ## 1. What this needs
# Point `SEEDX_ROOT` at the `pretrained/` folder of the published release (the SEED-X-17B files from
# Hugging Face, plus `stable-diffusion-xl-base-1.0` and the ViT extracted from Qwen-VL-Chat with the
# published `src/tools/reload_qwen_vit.py`). Any part can live elsewhere: `SEEDX_LLM`, `SEEDX_AGENT`,
# `SEEDX_VIT`, `SEEDX_DETOK`, `SEEDX_SDXL`, `SEEDX_TOKENIZER`. `SEEDX_VARIANT` picks `seed_x`
# (pre-trained) or `seed_x_i` (instruction-tuned); `SEEDX_DEVICE_MAP=auto` spreads the LLM over
# several GPUs.
#
# How much memory that takes is the subject of section 1b; this cell only looks at what is here.

# %%
# NBVAL_IGNORE_OUTPUT
paths = C.PublishedPaths.from_root()
print("variables:")
for name in ["SEEDX_ROOT", "SEEDX_VARIANT", *C.ENV.values(), "SEEDX_DEVICE_MAP"]:
    print(f"  {name:<16} {os.environ.get(name, '(unset)')}")

problems = paths.problems()
tok_dir = paths.tokenizer
if tok_dir is not None and tok_dir.is_dir() and not (tok_dir / "tokenizer.json").is_file():
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        problems.append(f"tokenizer: {tok_dir} has no tokenizer.json; reading tokenizer.model needs "
                        "`pip install sentencepiece protobuf`")

from seedx_lab.published.plan import build_stages, format_plan, make_plan

stages = build_stages()                                  # every published part on the meta device: no memory
bf16 = make_plan("bf16", stages=stages)
need = bf16.total_bytes() + bf16.peak_activation          # bf16 weights + the activation peak of one generation

gpu = torch.cuda.is_available()
if gpu:
    free, size = torch.cuda.mem_get_info()
    print(f"\nGPU: {torch.cuda.get_device_name()} with {size / 2**30:.0f} GiB ({free / 2**30:.0f} GiB free), "
          f"{torch.cuda.device_count()} device(s)")
else:
    print("\nGPU: none (torch.cuda.is_available() is False)")

if gpu and free < need and not os.environ.get("SEEDX_DEVICE_MAP"):
    problems.append(f"GPU memory: {free / 2**30:.0f} GiB free, about {need / 2**30:.0f} GiB needed on one GPU; "
                    "set SEEDX_DEVICE_MAP=auto to spread the LLM over several GPUs (or offload it)")
REAL = gpu and not problems
if problems:
    print("\nmissing:\n  " + "\n  ".join(problems))
print("\n->", "loading the real SEED-X" if REAL else "the real model cannot be loaded here: every section uses the stand-in")

# %% [markdown]
# ## 1b. Know before you download: `seedx-lab plan`
# `seedx-lab plan --dtype bf16 --gpus N --gpu-memory 80GiB` builds every stage at its published size on
# PyTorch's `meta` device (shapes without storage, so it runs on this CPU in seconds), counts the
# parameters, sizes each stage per dtype, estimates the activation and KV-cache memory of one
# generation (the formulas are in `seedx_lab/published/plan.py`), and asks accelerate's
# `infer_auto_device_map` where the stages would go. The cell below prints the plan for one 80 GiB GPU
# and then for two 24 GiB GPUs. Which stage is the largest, and how much of the total is the LLM? Does
# the activation peak matter next to the weights?

# %%
print(format_plan(make_plan("bf16", gpus=1, gpu_memory="80GiB", stages=stages)))
print()
two = make_plan("bf16", gpus=2, gpu_memory="24GiB", stages=stages)
print(format_plan(two).split("\n\n")[-1])

# %% [markdown]
# And for the GPUs of this machine (nothing is printed without one):

# %%
# NBVAL_IGNORE_OUTPUT
if gpu:
    here = make_plan("bf16", gpus=torch.cuda.device_count(), gpu_memory=size, stages=stages)
    print(format_plan(here).split("\n\n")[-1])

# %% [markdown]
# ## 2. The published layout, on a stand-in
# The release keeps its parts in separate files: the LLM as a Hugging Face folder, the two resamplers
# and the tile-position matrix in `agent/pytorch_model.bin`, the ViT in `QwenViT/qwen_vit_G.pt`, the
# de-tokenizer's Perceiver resampler in `seed_detokenizer/first_stage/pytorch_model.bin`, and SDXL as a
# diffusers folder. `write_published_layout` writes a seedx_lab model in that layout — same folders,
# file names and key names, tiny shapes — so the loader can be tested without 40 GB of downloads.
# The stand-in is seedx-tiny when it has been trained (`data/seedx-tiny`), otherwise a random tiny model.

# %%
# NBVAL_IGNORE_OUTPUT
try:
    standin, STANDIN = seedx_lab.load("seedx-tiny", device=DEVICE), "seedx-tiny (trained)"
except (FileNotFoundError, ValueError):
    words = "a red blue circle square . here it is :".split()
    tok = T.build_tokenizer(words)
    torch.manual_seed(0)
    standin, STANDIN = SeedX(SeedXConfig.tiny(len(tok)), tok).eval(), "random tiny model"

layout = Path(tempfile.mkdtemp(prefix="seedx-layout-"))
C.write_published_layout(standin, layout)
print(f"stand-in: {STANDIN}, written to a temporary pretrained/ folder:")
for f in sorted(p for p in layout.rglob("*") if p.is_file()):
    print(f"  {f.relative_to(layout).as_posix():<70} {f.stat().st_size / 1e6:7.2f} MB")

for part in ("agent", "vit", "detok"):
    state = C.read_state_dict(getattr(C.PublishedPaths.from_root(layout, env={}), part))
    heads = sorted({k.split(".")[0] for k in state})
    print(f"\n{part}: {len(state)} tensors, top-level names {heads}")
    for k in list(state)[:3]:
        print(f"  {k:<48} {tuple(state[k].shape)}")

# %% [markdown]
# Reading it back goes through `load_published`, the function the real files go through. It checks
# first (every path, then every key and shape against modules built on `meta`), and only then copies
# weights, tensor by tensor. The two models must agree exactly.

# %%
# NBVAL_IGNORE_OUTPUT
again = C.load_published(layout, progress=lambda m: print("  " + m))
ids = torch.tensor([standin.encode_ids("a red circle")])
same = torch.equal(standin.lvlm.llm(ids).logits, again.lvlm.llm(ids).logits)
print("identical logits after the round trip:", same)
assert same

# %% [markdown]
# A broken file is caught before anything is loaded, and the message names the file and the keys:

# %%
# NBVAL_IGNORE_OUTPUT
agent_file = C.PublishedPaths.from_root(layout, env={}).agent
state = dict(C.read_state_dict(agent_file))
state.pop("output_resampler.query")
broken = layout / "broken_agent.bin"
torch.save(state, broken)
try:
    C.load_published(paths=C.PublishedPaths.from_root(layout, env={"SEEDX_AGENT": str(broken)}))
except ValueError as e:
    print(type(e).__name__ + ":", str(e).replace(str(layout), "<layout>"))

# %% [markdown]
# ## 3. Load the model
# On a GPU the ViT, the resamplers and the de-tokenizer go to `cuda` in bfloat16 first; the LLM comes
# last, through `LlamaForCausalLM.from_pretrained(..., dtype=torch.bfloat16, device_map=...)`, so that
# `device_map="auto"` sees the memory the other parts already took.

# %%
# NBVAL_IGNORE_OUTPUT
if REAL:
    model = C.load_published(paths=paths, device="cuda", dtype=torch.bfloat16,
                             device_map=os.environ.get("SEEDX_DEVICE_MAP") or None, progress=print)
    VARIANT, MODEL = paths.variant, f"SEED-X ({paths.variant})"
    print(f"GPU memory in use: {torch.cuda.memory_allocated() / 2**30:.1f} GiB")
else:
    model, VARIANT, MODEL = again, "seed_x", f"stand-in ({STANDIN})"
print("model:", MODEL)
print("vocabulary:", len(model.tokenizer), " <img> id:", model.token_ids.boi, " <img_00000> id:", model.token_ids.img[0])

# %% [markdown]
# ## 4. Caption → image
# The prompt is the published one: `{caption}<img>` for SEED-X, and
# `[INST] Generate an image: {caption} [/INST]\n` for SEED-X-I — which does **not** end in `<img>`:
# the instruction-tuned model must predict the image itself. Once `<img>` is there the processor forces
# the 64 image tokens and `</img>`; their last-layer hidden states go through the output resampler and
# then the de-tokenizer. As in the published `SDXLAdapter.generate`, classifier-free guidance uses the
# ViT features of an all-zero image as the negative condition: a model loaded from the published layout
# records that in `config.negative` and `draw` (so `generate_image` and `generate` too) uses it without
# being told. The next cell checks, on whichever model ran, that the default negative is the published one.

# %%
# NBVAL_IGNORE_OUTPUT
caption = "a red circle on a blue square" if not REAL else "A super math wizard cat, richly textured oil painting."
prompt = C.published_prompt(VARIANT, "generate", caption)
ids = torch.tensor([model.encode_ids(prompt)], device=model.device)
capture = ["output_resampler.attn", "processor.decisions"]
if trace is not None:
    print(f"the trace will hold about {estimate_bytes(model, capture, seq_len=ids.shape[1] + 120, images=1) / 1e6:.1f} MB")
    with trace(model, capture=capture) as t:
        out = model.lvlm.generate(ids, max_new_tokens=120, max_blocks=1, eos_token_id=model.tokenizer.eos_token_id,
                                  pad_token_id=model.tokenizer.pad_token_id)
else:
    t = None
    out = model.lvlm.generate(ids, max_new_tokens=120, max_blocks=1, eos_token_id=model.tokenizer.eos_token_id,
                              pad_token_id=model.tokenizer.pad_token_id)
print("prompt:", repr(prompt))
print("generated:", model.decode(out.new_tokens[0])[:300])
print("images completed:", len(out.images[0]))

# %%
# NBVAL_IGNORE_OUTPUT
if out.images[0]:
    picture = model.draw(out.images[0][0].features, seed=42)                  # default negative, config's steps
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(picture)
    ax.set_title(f"{MODEL}\n{caption[:50]}", fontsize=8)
    ax.axis("off")
    plt.show()
else:
    print(f"{MODEL} did not open an image block within 120 tokens: nothing to draw")

# %% [markdown]
#
# %%
print("config.negative of the loaded model:", model.config.negative)
default_neg = model.negative_features()
published_neg = C.published_negative_features(model)       # ViT(zero image), pooled 256 -> 64, computed afresh
print(f"default negative {tuple(default_neg.shape)} equals the published one:", torch.equal(default_neg, published_neg))
print("differs from all-zero features (seedx-tiny's own negative):", not torch.equal(default_neg, torch.zeros_like(default_neg)))
print("seedx-tiny's config.negative:", standin.config.negative)

# %% [markdown]
# Inside the generation: the processor's decisions (outside a block it only "blocks" image tokens by
# setting their logits to `0.0`; inside it forces the next token), and the output resampler's
# attention — each of its 64 queries over the 64 image-token hidden states.

# %%
# NBVAL_IGNORE_OUTPUT
if t is not None and "processor.decisions" in t:
    dec = t["processor.decisions"]
    states = {s: sum(d["state"] == s for d in dec) for s in ("outside", "inside", "closing")}
    print("processor decisions by state:", states)
    outside = [d for d in dec if d["state"] == "outside"]
    if outside:
        print(f"P(<img>) at the last step outside a block: {outside[-1]['p_boi']:.3f}")
if t is not None and "output_resampler.attn" in t:
    attn = t["output_resampler.attn"].float().mean(1)[0]                  # [64 queries, 64 hidden states]
    fig, ax = plt.subplots(figsize=(4, 3.6))
    im = ax.imshow(attn.numpy(), cmap="viridis")
    ax.set_xlabel("image-token hidden state")
    ax.set_ylabel("output-resampler query")
    ax.set_title(f"output resampler attention (mean over heads)\n{MODEL}", fontsize=8)
    fig.colorbar(im, ax=ax)
    plt.show()

# %% [markdown]
# ## 5. Image → text
# The image is cut into any-res tiles (448 px on the real model), each view becomes 256 ViT features,
# the input resampler turns them into 64 embeddings, and those are written over the `<img_xxxxx>`
# positions of the prompt. The prompt is the published one (`Question: … Answer:` for SEED-X,
# `[INST] … [/INST]` for SEED-X-I), with the image blocks in front of the question.

# %%
# NBVAL_IGNORE_OUTPUT
photo = Image.fromarray(skimage.data.chelsea())                    # a cat, 451 x 300, ships with scikit-image
question = "Describe this image briefly."
feats, pos, tiles = model.encode_image(photo)
prompt = C.published_prompt(VARIANT, "describe", question, image_tokens=model.image_prompt(len(tiles)))
ids = torch.tensor([model.encode_ids(prompt)], device=model.device)
cmp, _ = block_masks(ids, model.token_ids, [[False] * len(tiles)])
kw = dict(image_features=feats, ids_cmp_mask=cmp, patch_positions=pos, max_new_tokens=60, processor_mode="strict",
          eos_token_id=model.tokenizer.eos_token_id, pad_token_id=model.tokenizer.pad_token_id)
if trace is not None:
    with trace(model, capture=["input_resampler.attn"]) as t2:
        out = model.lvlm.generate(ids, **kw)
else:
    t2, out = None, model.lvlm.generate(ids, **kw)
print(f"{len(tiles)} views (grid {tiles.decision.grid[0]}x{tiles.decision.grid[1]} + global), prompt of {ids.shape[1]} tokens")
print(f"{MODEL} says:", model.decode(out.new_tokens[0]))

# %% [markdown]
# Where do the input resampler's queries look? For the global view, each of the 64 queries has an
# attention map over the ViT's 16 × 16 grid of features (averaged over heads here). Queries sit on an
# 8 × 8 grid with 2-D positions: do neighbouring queries look at neighbouring places on the model loaded here?

# %%
# NBVAL_IGNORE_OUTPUT
if t2 is not None and "input_resampler.attn" in t2:
    a = t2["input_resampler.attn"].float()[-1].mean(0)                    # global view: [64 queries, 256 keys]
    side = int(round(a.shape[1] ** 0.5))
    fig, axes = plt.subplots(2, 8, figsize=(12, 3.4))
    for ax, q in zip(axes.flat, range(0, 64, 4)):
        ax.imshow(a[q].reshape(side, side).numpy(), cmap="magma")
        ax.set_title(f"query {q}", fontsize=7)
        ax.axis("off")
    fig.suptitle(f"input resampler: where 16 of the 64 queries look (global view) — {MODEL}", fontsize=9)
    plt.show()
    plt.figure(figsize=(3, 3))
    plt.imshow(tiles.images[-1])
    plt.axis("off")
    plt.title("the global view", fontsize=8)
    plt.show()

# %% [markdown]
# ## 6. Where does SEED-X want an image?
# `probes.boi_trace` reads P(`<img>` next) at every position of a text, from the last layer and through
# a logit lens on every layer (the final norm and `lm_head` applied to each layer's residual stream).
# On the real model, watch where the probability rises: after phrases that announce a picture?

# %%
# NBVAL_IGNORE_OUTPUT
story = ("Here is a picture of a red circle . here it is :" if not REAL else
         "I went to the beach today. Here is a photo of the sunset I took:")
if probes is not None:
    bt = probes.boi_trace(model, story)
    top = np.argsort(bt.p_final)[::-1][:3]
    for i in sorted(top):
        print(f"after {bt.tokens[i]!r:>14}: P(<img>) = {bt.p_final[i]:.3f}")
    fig = bt.plot()
    fig.suptitle(MODEL, fontsize=8)
    display(fig)

# %% [markdown]
# ## 7. The `0.0` that does not block
# Outside an image block the published processor sets the logits of `<img_00000>…</img>` to `0.0`.
# When every other logit is negative, `0.0` is the largest value and a "blocked" token wins.
# `probes.compare_blocking` runs the same prompts greedily under the published rule and under `-inf`
# and counts how often that happens. How often does it on the model loaded here? (Notebook 05 and the claims
# ledger below count it on seedx-tiny.)

# %%
# NBVAL_IGNORE_OUTPUT
prompts = (["a red circle .", "here it is :"] if not REAL else
           ["The capital of France is", "Draw me a cat.", "A short story about a dog: Once upon a time"])
if probes is not None:
    cmp_result = probes.compare_blocking(model, prompts, max_new_tokens=40)
    for row in cmp_result.table():
        print({k: row[k] for k in ("mode", "outside_steps", "would_win", "chose_blocked", "stray_tokens")})

# %% [markdown]
# ## 8. Why `<img>`? The causal probes of notebook 10
# The same interventions as notebook 10, on whichever model loaded: activation patching between a prompt
# that announces a picture and the same prompt ending in `.` (all cells of a direction in one batch), an
# attention knockout of the announcing words, and the LLM's attention captured on request (with its size
# from `estimate_bytes` first: on the 13 B model it is 40 layers x 40 heads x positions²).

# %%
# NBVAL_IGNORE_OUTPUT
clean, corrupt, announce = (("a big red circle on the left . it looks like this :",
                             "a big red circle on the left . it looks like this .", "it looks like this")
                            if not REAL else
                            ("I went to the beach today. Here is a photo of the sunset I took:",
                             "I went to the beach today. Here is a photo of the sunset I took.", "Here is a photo"))
if probes is not None and hasattr(probes, "activation_patching"):
    n_tok = len(model.encode_ids(clean))
    print(f"LLM attention of one {n_tok}-token pass would take "
          f"{estimate_bytes(model, capture=['llm.layers.*.attn'], seq_len=n_tok):,} bytes")
    g = probes.activation_patching(model, clean, corrupt, batch_size=None if not REAL else 8)
    print(f"{MODEL}: logit(<img>) clean {g.logit_clean:.2f}, corrupt {g.logit_corrupt:.2f}; "
          "restored at the last position per site:", ", ".join(f"{v:.2f}" for v in g.denoise[:, -1]))
    k = probes.attention_knockout(model, clean, announce, windows=[list(range(model.lvlm.llm.config.num_hidden_layers))])
    print(f"P(<img>) {k.p_base:.3f}; with '{announce}' knocked out in every layer {k.p_knocked[0]:.3f}")
    fig = g.plot()
    fig.suptitle(MODEL, fontsize=8)
    display(fig)

# %% [markdown]
# ## 9. The claims ledger on this model
# `seedx_lab.lab.claims.ledger` measures the twelve claims of the seed analysis (notebook 13 explains each
# measurement) on the model loaded above: the real SEED-X when its files are present, the stand-in otherwise.
# Sample sizes are small here (n below); the printed line gives them. A claim whose measurement does not
# apply to this model (e.g. a shape-world picture at a tile size it does not take) is listed as
# `not measured`, with the error.

# %%
# NBVAL_IGNORE_OUTPUT
from seedx_lab.lab import claims as CL

LEDGER_N, LEDGER_STEPS = (8, 8) if REAL else (2, 1)
ledger = CL.ledger(model, n=LEDGER_N, n_steps=LEDGER_STEPS, model_name=MODEL)
print(ledger)
measured = [r for r in ledger.results if r.verdict != CL.NOT_MEASURED]
assert len(ledger.results) == 12
assert all(r.verdict in CL.VERDICTS and r.evidence for r in measured)
if not REAL and STANDIN.startswith("seedx-tiny"):   # seedx-tiny read back through the published layout
    assert len(measured) == 12, [r.evidence for r in ledger.results if r.verdict == CL.NOT_MEASURED]

# %% [markdown]
# ## What to take away
# * The release is six pieces; two of its three `.bin` files are *partial* state dicts that the
#   published code loads with `strict=False`, which silently skips anything missing or mis-shaped. The
#   loader here does the opposite: it names every missing or unexpected key and both shapes of a
#   mismatch, before any weight is copied.
# * An agent file saved from the whole agent (`llm.*`, each layer's rotary `inv_freq`) or from the
#   LoRA training recipe (peft's `lora_A`/`lora_B` names) loads too: buffers are checked and skipped,
#   LoRA pairs are merged with the `adapter_config.json` next to the file (docs/published-weights.md).
# * Nothing about the real model needed new classes: the widths come from `config.json`, the published
#   YAML configs and the SDXL folder; the counts (64 queries, 64 forced tokens, 256 ViT features per
#   view) are the ones seedx-tiny kept.
#
# ## Exercises
# 1. Load `seed_x` and `seed_x_i` (`SEEDX_VARIANT`) and run section 4 with SEED-X-I's prompt, which
#    does not end in `<img>`. At which step does SEED-X-I open the block, and with what P(`<img>`)?
# 2. In section 4, draw the same features with `model.draw(features, seed=42, negative_features=torch.zeros_like(features))`
#    (the negative seedx-tiny was trained with) instead of the zero *image*'s ViT features. How much does
#    the picture change?
# 3. `trace.estimate_bytes` says how much a capture will hold. How large is `capture=["llm.*"]` for a
#    describe call on a 2x2-tile image (5 views, about 360 prompt tokens) on the 13 B model?
# 4. Write seedx-tiny in the published layout (`seedx-lab convert --to-published /tmp/pt`), delete one
#    key from `QwenViT/qwen_vit_G.pt`, and compare the loader's message with what the published
#    `load_zero3_checkpoint` would have done.
#
# Every answer below runs on whichever model section 3 loaded; on the stand-in its numbers only show that
# the code path works, so the cells are not checked against stored output.
#
# <details><summary>Answer 1</summary>
#
# SEED-X-I's generation prompt is `[INST] Generate an image: {caption} [/INST]\n`: nothing forces the block,
# so the model has to write `<img>` itself. Record the processor's decisions while it generates; the step at
# which `<img>` appears among the new tokens is the step that opened the block, and that step's decision holds
# P(`<img>`) before processing. The first cell below prints both, or says that no block was opened within the
# budget.
# </details>
#
# <details><summary>Answer 2</summary>
#
# Classifier-free guidance extrapolates away from the negative condition, so changing it changes every step of
# the sampler even with the same seed. The published negative is the ViT's reading of an all-black picture
# (pooled to 64 features); all-zero features lie elsewhere in feature space. The second cell draws the same
# features with seed 42 both ways and prints the mean absolute pixel difference.
# </details>
#
# <details><summary>Answer 3</summary>
#
# `estimate_bytes` only needs the modules' shapes, so the 13 B LLM and the two resamplers can be built on the
# `meta` device (they are in `stages` from section 1) and wrapped in a `ContinuousLVLM`. A describe call on a
# 2x2-tile image feeds 5 views and about 360 prompt tokens, plus the generated answer (60 tokens at most in
# section 5). The third cell prints the estimate in bfloat16 and which captured names hold most of it.
# </details>
#
# <details><summary>Answer 4</summary>
#
# The published `load_zero3_checkpoint` calls `load_state_dict(..., strict=False)`: a missing key is skipped
# without a word and that weight keeps its random initial value, so the ViT silently runs with one random
# tensor. The loader here checks every key against a model built on `meta` first and refuses with a
# `ValueError` that names the file and the key. The last answer cell writes the layout, saves a copy of the ViT
# file without one key, points `SEEDX_VIT` at the copy and prints the loader's message.
# </details>

# %%
# NBVAL_IGNORE_OUTPUT
prompt_i = C.published_prompt("seed_x_i", "generate", caption)
ids_i = torch.tensor([model.encode_ids(prompt_i)], device=model.device)
with trace(model, capture=["processor.decisions"]) as t_i:
    out_i = model.lvlm.generate(ids_i, max_new_tokens=120, max_blocks=1, eos_token_id=model.tokenizer.eos_token_id,
                                pad_token_id=model.tokenizer.pad_token_id)
new_i = out_i.new_tokens[0].tolist()
by_step = {d["step"]: d for d in t_i["processor.decisions"] if d["row"] == 0}
print("prompt:", repr(prompt_i))
if model.token_ids.boi in new_i:
    step = new_i.index(model.token_ids.boi)
    print(f"{MODEL} opened the block at new token {step}, with P(<img>) = {by_step[step]['p_boi']:.3f} before processing")
else:
    print(f"{MODEL} did not open a block within 120 tokens; it wrote:", model.decode(new_i)[:200])

# %%
# NBVAL_IGNORE_OUTPUT
prompt_4 = C.published_prompt(VARIANT, "generate", caption)
gen_4 = model.lvlm.generate(torch.tensor([model.encode_ids(prompt_4)], device=model.device), max_new_tokens=120,
                            max_blocks=1, eos_token_id=model.tokenizer.eos_token_id,
                            pad_token_id=model.tokenizer.pad_token_id)
if gen_4.images[0]:
    feats_4 = gen_4.images[0][0].features
    with_published = model.draw(feats_4, seed=42)
    with_zeros = model.draw(feats_4, seed=42, negative_features=torch.zeros_like(feats_4))
    diff = np.abs(np.asarray(with_published, dtype=float) - np.asarray(with_zeros, dtype=float)).mean()
    print(f"{MODEL}: mean |pixel difference| between the two negatives, seed 42: {diff:.1f} of 255")
    fig, axes = plt.subplots(1, 2, figsize=(5, 2.6))
    for ax, im, title in zip(axes, (with_published, with_zeros), ("negative: ViT(zero image)", "negative: zeros")):
        ax.imshow(im)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    plt.show()
else:
    print(f"{MODEL} did not complete an image block: nothing to draw")

# %%
# NBVAL_IGNORE_OUTPUT
from seedx_lab.lvlm import ContinuousLVLM

big_ids = T.ImageTokenIds(boi=32000, eoi=32001, bop=32002, eop=32003, img=tuple(range(32004, 32104)))
lvlm_13b = ContinuousLVLM(stages["llm"], stages["input_resampler"], stages["output_resampler"], big_ids, device="meta")
shapes_13b = estimate_shapes(lvlm_13b, capture=["llm.*"], seq_len=360 + 60, views=5, dtype=torch.bfloat16)
bytes_13b = estimate_bytes(lvlm_13b, capture=["llm.*"], seq_len=360 + 60, views=5, dtype=torch.bfloat16)
print(f"capture=['llm.*'] for a describe call (5 views, 360 + 60 positions) on the 13 B model: {bytes_13b / 2**30:.2f} GiB")
largest = sorted(shapes_13b.items(), key=lambda kv: -int(np.prod(kv[1][0])))[:3]
for name, (shape, dt) in largest:
    print(f"  {name:<28} {shape}")

# %%
# NBVAL_IGNORE_OUTPUT
import shutil

layout_4 = Path(tempfile.mkdtemp(prefix="seedx-layout-"))
try:
    C.write_published_layout(standin, layout_4)
    vit_file = C.PublishedPaths.from_root(layout_4, env={}).vit
    vit_state = dict(C.read_state_dict(vit_file))
    dropped = next(iter(vit_state))
    vit_state.pop(dropped)
    broken_vit = layout_4 / "broken_qwen_vit_G.pt"      # a new file: the tensors read above may still map the old one
    torch.save(vit_state, broken_vit)
    print(f"deleted {dropped!r} from a copy of {vit_file.relative_to(layout_4).as_posix()}")
    try:
        C.load_published(paths=C.PublishedPaths.from_root(layout_4, env={"SEEDX_VIT": str(broken_vit)}))
        print("loaded without complaint")
    except ValueError as e:
        print(type(e).__name__ + ":", str(e).replace(str(layout_4), "<layout>"))
finally:
    shutil.rmtree(layout_4, ignore_errors=True)

# %%
# NBVAL_IGNORE_OUTPUT
shutil.rmtree(layout, ignore_errors=True)   # last: the stand-in read back from it (section 2) ran every cell above
print("removed the temporary layout")

# %% [markdown]
# ## What you should now know
# 1. The published SEED-X has the same stages as seedx-tiny at full width: a 448-pixel ViT, LLaMA-13B and SDXL.
# 2. Its files load into the same classes; on a CPU the notebook checks shapes on the meta device.
# 3. On a GPU the same cells run the real model in bfloat16.
