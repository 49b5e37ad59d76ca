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
# # 05 · Forced generation: how SEED-X writes an image
#
# **What this notebook teaches.** A language model writes one token at a time, choosing each from a
# score per vocabulary entry (the *logits*). SEED-X writes an image the same way, except that the model
# only chooses the first token, `<img>`. Everything after it is dictated by a small piece of code, a
# *logits processor* called `AutoImageTokenGenerationProcessor`:
#
# ```
# caption ... <img> <img_00000> <img_00001> ... <img_00063> </img>
#             ^     ^---------- forced, one per step -----^  ^ forced
#             model's choice (or given in the prompt)
# ```
#
# The tokens themselves carry no picture. What matters are the LLM's last-layer **hidden states** at the
# 64 image-token positions: notebook 06 turns them into pixels.
#
# The processor has two jobs and does both with plain arithmetic on the logits:
# * **inside** a block it *forces* the next image token by giving it the score `max + 10`;
# * **outside** a block it *blocks* the image tokens and `</img>` by setting their scores to `0.0`.
#
# You will:
# 1. watch the processor decide, step by step, on a caption that ends in `<img>`;
# 2. compare the published arithmetic (`mode="faithful"`) with a fixed version (`mode="strict"`, which
#    uses `-inf`) on hand-made scores, where every case can be seen at once;
# 3. test five claims of the seed analysis on the trained seedx-tiny:
#    **#4** "outside a block the image tokens are blocked", **#7** "image generation cannot be stochastic",
#    **#8** "exactly 64 image tokens are always generated", **#9** "generation samples with temperature 0.7
#    and top-p 0.5" and **#11** "64 tokens make generation fast".

# %%
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %%
import time
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch

import seedx_lab
from seedx_lab import generation as G
from seedx_lab import world as W
from seedx_lab.tokens import ImageTokenIds, find_image_blocks
from seedx_lab.sequences import encode_pieces, story_pieces

warnings.filterwarnings("ignore", category=FutureWarning)   # a transformers deprecation notice, not ours
# the processor warns when a block cannot finish before max_new_tokens; section 5 shows that warning on purpose
warnings.filterwarnings("ignore", category=UserWarning, module=r"seedx_lab\.")
torch.manual_seed(0)
plt.rcParams["figure.dpi"] = 72
plt.rcParams["image.interpolation"] = "nearest"      # show the real pixels (and keep the notebook small)
model = seedx_lab.load("seedx-tiny", device=DEVICE)
lvlm, tok, tid = model.lvlm, model.tokenizer, model.token_ids
print("vocabulary:", len(tok), "| <img> =", tid.boi, "| </img> =", tid.eoi,
      "| <img_00000> ... <img_00063> =", tid.img[0], "...", tid.img[63])
print("image tokens per generated block:", lvlm.num_img_tokens)

# %% [markdown]
# ## 1. The processor, step by step
# We take a caption from the held-out test split of the shape world and append `<img>`, exactly as the
# published text-to-image script does. `fast_forced_block=False` makes `generate` run one token per step
# (normally the block rides in one forward pass, see section 7), and a `seedx_lab.trace` that captures
# `processor.decisions` records what the processor decided at each step.
#
# A tiny helper processor, `RawScores`, changes nothing: it only keeps a copy of the scores the model
# produced *before* the forcing, so we can ask "what would the model have chosen on its own?".

# %%
class RawScores:
    """A logits processor that records the scores it sees and passes them on unchanged."""

    def __init__(self):
        self.rows = []

    def __call__(self, input_ids, scores):
        self.rows.append(scores[0].clone())
        return scores


caption = W.caption_image_sample(0, "test").caption
prompt = caption + "<img>"
ids = torch.tensor([model.encode_ids(prompt)])
print("prompt:", prompt)
print("tokens:", tok.convert_ids_to_tokens(ids[0].tolist()))

raw = RawScores()
proc = G.AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=64, mode="faithful")
with seedx_lab.trace(model, capture=["processor.decisions"]) as t:
    out = lvlm.generate(ids, max_new_tokens=65, logits_processor=[raw, proc], fast_forced_block=False)
decisions = t["processor.decisions"]
new = out.new_tokens[0].tolist()
print(f"\n{len(decisions)} decisions for {len(new)} new tokens")
print(f"{'step':>4} {'state':>8} {'k':>3} {'forced token':>13} {'its raw score':>14} {'raw max':>8}")
for d, row in list(zip(decisions, raw.rows))[:3] + list(zip(decisions, raw.rows))[-2:]:
    print(f"{d['step']:>4} {d['state']:>8} {d['block_index']:>3} {tok.convert_ids_to_tokens(d['forced_id']):>13} "
          f"{d['overridden_score']:>14.2f} {row.max().item():>8.2f}")

# %% [markdown]
# The same run as an interactive view: every token coloured by kind (prompt faded), and below it the
# processor's decision at the selected step. Move the slider in JupyterLab; a saved notebook shows the last
# state as a picture.

# %%
from seedx_lab import widgets

timeline = widgets.token_timeline(model, caption=caption)
timeline.set(step=0)
timeline

# %% [markdown]
# Every step is `inside` (k image tokens written so far, k = 0..63) until the last one, `closing`, which
# forces `</img>`. Is the forced token's own score the highest? Nothing makes it so: the model is never
# trained to predict image tokens (they carry no language-model label), so the force may override it.
# How far from the model's own choice is each forced token? Its rank among the raw scores tells.

# %%
ranks = np.array([int((row > row[d["forced_id"]]).sum()) for d, row in zip(decisions, raw.rows)])
states = [d["state"] for d in decisions]
fig, ax = plt.subplots(figsize=(9, 2.6))
ax.bar(range(len(ranks)), ranks + 1, color=["tab:blue" if s == "inside" else "tab:orange" for s in states])
ax.set_yscale("log")
ax.set_xlabel("decoding step after <img> (blue: forces <img_k>, orange: forces </img>)")
ax.set_ylabel("rank of the forced token\nin the raw scores (1 = top)")
ax.set_title(f"the model's own top choice was the forced token at {int((ranks == 0).sum())} of {len(ranks)} steps")
plt.show()
print("steps where the model's own top choice already was the forced token:", int((ranks == 0).sum()), "of", len(ranks))

# %%
assert [d["state"] for d in decisions] == ["inside"] * 64 + ["closing"]
assert [d["forced_id"] for d in decisions] == list(tid.img) + [tid.eoi]
assert new == list(tid.img) + [tid.eoi]
print("the processor wrote <img_00000> ... <img_00063> </img>, one forced token per step")

# %% [markdown]
# Here is the picture this block becomes after the output resampler and the de-tokenizer (notebook 06
# opens those two boxes).

# %%
picture = model.draw(out.images[0][0].features, num_inference_steps=20, seed=0)
fig, ax = plt.subplots(figsize=(2.2, 2.2))
ax.imshow(picture)
ax.set_title(caption, fontsize=8)
ax.axis("off")
plt.show()

# %% [markdown]
# ## 2. Faithful and strict, on hand-made scores
# To see every case of the rule at once we build a toy vocabulary of 11 tokens: four words, the four
# framing tokens and **three** image tokens (so a block is `<img> <img_0> <img_1> <img_2> </img>`). Four
# sequences end in four different ways. Their scores are made up, all negative — a perfectly normal
# situation for logits, since only their differences matter to the softmax.
#
# * **faithful** = the published arithmetic: `0.0` outside a block, `max + 10` inside, and the state is
#   read from the *last token only*;
# * **strict** = `-inf` outside a block; inside, every other token gets `-inf`, and the state is read from
#   the block structure (`<img>` followed by `<img_0> ... <img_{k-1}>` in order).

# %%
words = ["the", "red", "circle", "."]
toy_names = words + ["<img>", "</img>", "<patch>", "</patch>", "<img_0>", "<img_1>", "<img_2>"]
toy = ImageTokenIds(boi=4, eoi=5, bop=6, eop=7, img=(8, 9, 10))
toy_ids = torch.tensor([
    [3, 0, 1, 2],      # "... the red circle"        -> outside a block
    [0, 1, 2, 4],      # "the red circle <img>"      -> force <img_0>
    [4, 8, 9, 10],     # "<img> <img_0..2>"          -> force </img>
    [0, 1, 2, 9],      # a stray <img_1> after text  -> ?
])
#                          the   red circle     .  <img> </img> <patch> </patch> <img_0> <img_1> <img_2>
toy_scores = torch.tensor([[-2.0, -1.5, -2.5, -0.8, -4.0, -3.0, -6.0, -6.0, -3.0, -3.5, -3.2],
                           [-1.0, -2.0, -0.5, -1.5, -3.0, -2.5, -5.0, -5.0, -4.0, -3.0, -3.5],
                           [-0.9, -1.2, -2.0, -0.3, -2.0, -3.0, -5.0, -5.0, -3.0, -2.0, -4.0],
                           [-1.8, -2.2, -2.9, -0.6, -3.0, -2.5, -5.0, -5.0, -3.5, -4.0, -3.0]])
print("raw scores (rows = sequences, columns = tokens):")
print("      " + " ".join(f"{n:>8}" for n in toy_names))
for r in range(4):
    print(f"row {r} " + " ".join(f"{v:8.2f}" for v in toy_scores[r].tolist()))

# %%
print(f"{'row':>3} {'ends with':>9} | {'faithful reads':>14} {'picks':>8} {'P(pick)':>8} | "
      f"{'strict reads':>12} {'picks':>8} {'P(pick)':>8}")
picks = {}
for mode in G.MODES:
    p = G.AutoImageTokenGenerationProcessor(token_ids=toy, num_img_gen_tokens=3, mode=mode)
    st = p.states(toy_ids)
    s = p(toy_ids, toy_scores)
    picks[mode] = (st, s.argmax(-1), s.softmax(-1).max(-1).values)
for r in range(4):
    cells = []
    for mode in G.MODES:
        st, pick, prob = picks[mode]
        cells.append(f"{G.STATE_NAMES[int(st.state[r])]:>14} {toy_names[int(pick[r])]:>8} {prob[r].item():8.3f}")
    print(f"{r:>3} {toy_names[int(toy_ids[r, -1])]:>9} | {cells[0]} | {cells[1]}")

# %% [markdown]
# Read it row by row:
# * **row 0** (outside): every real word scores below zero, so the faithful "blocking" to `0.0` *raises*
#   the blocked tokens above all of them and greedy decoding picks an image token. Strict picks a word.
# * **rows 1 and 2** (inside): both modes force the right token. Under sampling the faithful force is a
#   strong nudge (`max + 10`), the strict one is certain (every other token is `-inf`).
# * **row 3**: a stray `<img_1>` after text. Faithful reads only the last token, thinks a block is open and
#   forces `<img_2>`; strict sees that no `<img>` opened it and treats the row as outside.

# %%
f_state, f_pick, _ = picks["faithful"]
s_state, s_pick, s_prob = picks["strict"]
blocked_toy = set(G.blocked_token_ids(toy, 3))
assert int(f_pick[0]) in blocked_toy and int(s_pick[0]) not in blocked_toy
assert f_pick[1:3].tolist() == s_pick[1:3].tolist() == [8, 5] and torch.all(s_prob[1:3] == 1.0)
assert G.STATE_NAMES[int(f_state.state[3])] == "inside" and G.STATE_NAMES[int(s_state.state[3])] == "outside"
assert bool(G.blocked_token_would_win(toy_scores[:1], toy, 3)[0])
print("with all scores negative, the published 0.0 makes a 'blocked' token the greedy choice; -inf does not")

# %% [markdown]
# How strong is `max + 10` under sampling? With SEED-X's vocabulary (32 330 tokens) and a model that has
# no preference at all (all scores equal), the forced token gets `e^10 / (e^10 + 32 329)`:

# %%
V = 32330
big = ImageTokenIds(boi=32000, eoi=32001, bop=32002, eop=32003, img=tuple(range(32004, 32104)))
row = torch.tensor([[1, 32000]])                      # the sequence ends in <img>
flat = torch.zeros(1, V)
for mode in G.MODES:
    p = G.AutoImageTokenGenerationProcessor(token_ids=big, num_img_gen_tokens=64, mode=mode)
    s = p(row, flat)
    print(f"{mode:>8}: P(forced token) at temperature 1.0 = {s.softmax(-1)[0, 32004].item():.3f}, "
          f"at 0.7 = {(s / 0.7).softmax(-1)[0, 32004].item():.3f}")
p_faithful = G.AutoImageTokenGenerationProcessor(token_ids=big, num_img_gen_tokens=64)(row, flat).softmax(-1)[0, 32004]
assert 0.3 < p_faithful.item() < 0.5
print(f"max + 10 is a nudge, not a guarantee: sampling at temperature 1 would leave the block with probability "
      f"{1 - p_faithful.item():.2f} per step here")

# %% [markdown]
# The published `generate` never samples (claim #9 below), so this weakness stays hidden there.
#
# ## 3. Claim #4 — is `0.0` a ban? Measured on the model's own scores
# The seed analysis says that outside a block "the processor blocks the image tokens". We read the test
# stories and the text-only samples of the shape world through the model (one forward pass each, teacher
# forcing) and collect the raw scores at every position where the next token is chosen freely, i.e. outside
# any image block. For each one we ask `generation.blocked_token_would_win`: after setting the blocked
# scores to `0.0`, is the argmax a blocked token?

# %%
rows_scores = []
texts = [W.story_sample(s, "test").segments for s in range(12)] + [W.text_only_sample(s, "test").segments for s in range(12)]
with torch.no_grad():
    for segs in texts:
        seq = encode_pieces(model, story_pieces(segs))[0]
        logits = lvlm(torch.tensor([seq]))["logits"][0].float()          # [T, V]
        forced_next = set()
        for blk in find_image_blocks(seq, tid):
            forced_next.update(range(blk.start, blk.end - 1))          # <img> and image tokens: next is forced
        free = [i for i in range(len(seq) - 1) if i not in forced_next]
        rows_scores.append(logits[free])
real = torch.cat(rows_scores)                                         # [positions, V]
blocked = G.blocked_token_ids(tid, 64)
others = torch.ones(real.shape[1], dtype=torch.bool)
others[blocked] = False
would_win = G.blocked_token_would_win(real, tid, 64)
all_negative = real[:, others].amax(-1) < 0
mass_faithful = G.blocked_token_mass(real, tid, 64)
strict = G.AutoImageTokenGenerationProcessor(token_ids=tid, mode="strict")
mass_strict = strict(torch.ones(len(real), 1, dtype=torch.long), real).softmax(-1)[:, blocked].sum(-1)
print(f"free positions scored: {len(real)}")
print(f"a 'blocked' token would win (greedy):      {int(would_win.sum())} of {len(real)} ({would_win.float().mean():.1%})")
print(f"positions whose unblocked scores are all < 0: {int(all_negative.sum())}")
print(f"probability left on blocked tokens, faithful: min {mass_faithful.min():.0e}, mean {mass_faithful.mean():.0e}")
print(f"probability left on blocked tokens, strict:   max {mass_strict.max():.0e}")

# %% [markdown]
# Does the best text token score above zero at these positions, so that greedy decoding is not fooled? The
# counts above answer. Either way `0.0` is not a ban: it is a *score*, and it wins exactly when all other scores are
# negative. Because the softmax ignores a constant shift, we can make that happen without changing what
# the model believes: subtract `max + 1` from a real row. The distribution over the words is the same, the
# "blocked" tokens now win.

# %%
row0 = real[:1]
shifted = row0 - row0.max() - 1.0
same_belief = torch.allclose(row0[:, others].softmax(-1), shifted[:, others].softmax(-1), atol=1e-6)
print("same distribution over the unblocked tokens after the shift:", same_belief)
print("blocked token wins before / after the shift:", bool(G.blocked_token_would_win(row0, tid)[0]),
      "/", bool(G.blocked_token_would_win(shifted, tid)[0]))

# %%
assert torch.equal(would_win, all_negative), "0.0 should win exactly when every unblocked score is negative"
assert mass_faithful.min() > 0 and mass_strict.max() == 0
assert same_belief and bool(G.blocked_token_would_win(shifted, tid)[0])
print("claim #4 is only half true: 0.0 blocks while the text scores are positive, not in general "
      f"(a blocked token won at {int(would_win.sum())} of {len(real)} positions here; a shift of the scores makes "
      f"it win; sampling at temperature 1 would pick one with probability {mass_faithful.mean():.1e} per step)")

# %% [markdown]
# ## 4. Claim #7 — the forced block is deterministic
# Under greedy decoding the tokens after `<img>` are fixed, so the hidden states at the 64 positions are
# a function of the prompt alone. Run the same caption twice: the 64 hidden states (and the 64 features
# the output resampler makes of them) are bit-for-bit equal.

# %%
def first_block(o):
    return o.images[0][0]


a = first_block(lvlm.generate(ids, max_new_tokens=65))
b = first_block(lvlm.generate(ids, max_new_tokens=65))
print("hidden states:", tuple(a.hidden.shape), "| features:", tuple(a.features.shape))
print("identical hidden states:", torch.equal(a.hidden, b.hidden), "| identical features:", torch.equal(a.features, b.features))

# %% [markdown]
# Where can variety come from, then? From sampling the **text before** `<img>` (when sampling is switched
# on), and from the de-tokenizer's noise (notebook 06). Does sampling *inside* the block change anything? We
# sample with five different random generators — with the published temperature 0.7 / top-p 0.5 and the
# faithful processor, and with temperature 1.0 / no top-p and the strict processor — and compare the blocks
# with each other and with the greedy one.
#
# One detail: with sampling and the faithful processor `generate` takes the block one step at a time,
# while greedy decoding appends the whole block in one forward pass. The two orders of arithmetic may differ
# by float rounding, so those are compared with a tolerance (1e-4) and runs of the same kind bit for bit.

# %%
sampled = {}
for label, kw in {"faithful, T=0.7, top-p=0.5": dict(temperature=0.7, top_p=0.5, processor_mode="faithful"),
                  "strict, T=1.0, top-p=1.0": dict(temperature=1.0, top_p=1.0, processor_mode="strict")}.items():
    sampled[label] = [first_block(lvlm.generate(ids, max_new_tokens=65, do_sample=True,
                                                generator=torch.Generator().manual_seed(k), **kw)) for k in range(5)]
    same = all(torch.equal(x.hidden, sampled[label][0].hidden) for x in sampled[label])
    diff = max((x.hidden - a.hidden).abs().max().item() for x in sampled[label])
    print(f"{label:>28}: 5 sampled blocks identical to each other: {same}; "
          f"largest difference to the greedy block: {'< 1e-4' if diff < 1e-4 else diff}")

# %%
story_start = "let us draw a"
story_ids = torch.tensor([model.encode_ids(story_start)])
texts_sampled = []
for k in range(6):
    o = lvlm.generate(story_ids, max_new_tokens=14, do_sample=True, temperature=1.0,
                      generator=torch.Generator().manual_seed(k), eos_token_id=tok.eos_token_id)
    texts_sampled.append(model.decode(o.new_tokens[0]))
for s in texts_sampled:
    print(f"  {story_start} | {s}")

# %%
assert torch.equal(a.hidden, b.hidden) and torch.equal(a.features, b.features)
for blocks in sampled.values():
    assert all(torch.equal(x.hidden, blocks[0].hidden) for x in blocks)
    assert all(torch.allclose(x.hidden, a.hidden, atol=1e-4) for x in blocks)
assert len(set(texts_sampled)) > 1
print("claim #7 holds for the LLM part: given the prompt up to <img>, the 64 hidden states are fixed; "
      "only the text before <img> (when sampled) and the de-tokenizer's noise can vary")

# %% [markdown]
# ## 5. Claim #8 — exactly 64 image tokens?
# When a block completes, yes: the processor writes `<img_00000>` to `<img_00063>` and then `</img>`. But
# `generate` also stops after `max_new_tokens`. If the budget ends inside a block, the block is cut. The
# published `generate` then simply finds no complete block and returns no image, without a word.
# `ContinuousLVLM.generate` keeps the cut block in `out.incomplete_blocks`, and the faithful processor warns.

# %%
full = lvlm.generate(ids, max_new_tokens=65)
blk = find_image_blocks(full.sequences[0], tid)[-1]
print(f"budget 65: complete={blk.complete}, image tokens={blk.n_tokens}, images returned={len(full.images[0])}")

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always", UserWarning)
    cut = lvlm.generate(ids, max_new_tokens=30, fast_forced_block=False)
cut_blk = cut.incomplete_blocks[0][0]
print(f"budget 30: images returned={len(cut.images[0])}, incomplete blocks={len(cut.incomplete_blocks[0])} "
      f"(complete={cut_blk.complete}, image tokens={cut_blk.n_tokens})")
print("warning:", str(caught[0].message)[:95], "...")

# %%
assert blk.complete and blk.n_tokens == 64 and full.images[0][0].hidden.shape[0] == 64
assert cut.images[0] == [] and not cut_blk.complete and cut_blk.n_tokens == 30
assert any("cut off" in str(w.message) for w in caught)
print("claim #8 holds only for complete blocks: a block cut by max_new_tokens yields no image at all")

# %% [markdown]
# ## 6. Claim #9 — does `generate` sample with temperature 0.7 and top-p 0.5?
# The published `generate` passes `temperature=0.7` and `top_p=0.5` to the underlying generation call but
# also hard-codes `do_sample=False`. With `do_sample=False` temperature and top-p are ignored: decoding is
# greedy. We reproduce both calls on an open-ended prompt.

# %%
def continue_text(do_sample, temperature=1.0, top_p=1.0, seed=0):
    o = lvlm.generate(story_ids, max_new_tokens=14, do_sample=do_sample, temperature=temperature, top_p=top_p,
                      generator=torch.Generator().manual_seed(seed), eos_token_id=tok.eos_token_id)
    return model.decode(o.new_tokens[0])


greedy = continue_text(False)
published_call = continue_text(False, temperature=0.7, top_p=0.5)
really_sampled = [continue_text(True, temperature=0.7, top_p=0.5, seed=k) for k in range(8)]
print("greedy:                              ", greedy)
print("do_sample=False, T=0.7, top-p=0.5:   ", published_call)
print("do_sample=True,  T=0.7, top-p=0.5, 8 seeds:", len(set(really_sampled)), "distinct continuations")
for s in sorted(set(really_sampled)):
    print("   ", s)

# %% [markdown]
# Even switched on, top-p 0.5 keeps only the tokens that make up the first half of the probability mass.
# When the model is confident that is one token, and sampling *is* greedy. How often is the nucleus larger
# than one token on the positions of section 3?

# %%
probs = (real / 0.7).softmax(-1)
top = probs.sort(-1, descending=True).values
nucleus = ((top.cumsum(-1) - top) < 0.5).sum(-1)          # tokens kept by top-p 0.5
print(f"nucleus size at T=0.7, top-p=0.5: 1 token at {(nucleus == 1).float().mean():.1%} of positions, "
      f"largest {int(nucleus.max())}")

# %%
assert published_call == greedy, "with do_sample=False, temperature and top-p must not change anything"
print("claim #9 is false as stated: the published call decodes greedily; temperature 0.7 and top-p 0.5 are ignored")

# %% [markdown]
# ## 7. Claim #11 — why 64 tokens make image generation fast
# An autoregressive image generator pays one decoding step per image token. Chameleon writes 1024 VQ
# tokens per image (a 32 x 32 grid at 512 px), Janus 576 (24 x 24 at 384 px). Codebook sizes are a different
# number, easy to mix up with the token count: Chameleon's VQ codebook has 8192 entries, Janus's 16 384. We
# read all four numbers from the `transformers` implementations of the two models, installed here.
# SEED-X writes 64 learnable-query tokens plus `</img>`: 65 steps. And since those 65 tokens never depend
# on the model's choices, they can even be fed **in the prompt's own forward pass** when the prompt ends in
# `<img>` (`fast_forced_block=True`, the default here), which the published code does not do.
#
# We count the LLM's forward passes with a hook, for both paths.

# %%
calls = []
hook = lvlm.llm.register_forward_hook(lambda mod, args, kwargs_out: calls.append(1))
try:
    counts = {}
    outs = {}
    for fast in (True, False):
        calls.clear()
        outs[fast] = lvlm.generate(ids, max_new_tokens=65, fast_forced_block=fast)
        counts[fast] = len(calls)
finally:
    hook.remove()
print(f"forward passes, block at once (fast path): {counts[True]}  (prompt and block together)")
print(f"forward passes, one token at a time:       {counts[False]}  (prompt + 64 image tokens + </img>)")
print("same tokens:", torch.equal(outs[True].sequences, outs[False].sequences))

import inspect

from transformers import ChameleonProcessor, ChameleonVQVAEConfig, JanusVisionConfig, JanusVQVAEConfig

others = {
    "Janus": (JanusVisionConfig().num_image_tokens, JanusVQVAEConfig().num_embeddings),
    "Chameleon": (inspect.signature(ChameleonProcessor.__init__).parameters["image_seq_length"].default,
                  ChameleonVQVAEConfig().num_embeddings),
}
print(f"\n{'model':<24} {'image tokens':>12} {'decoding steps':>15} {'codebook':>9}")
print(f"{'SEED-X (token by token)':<24} {64:>12} {65:>15} {'none':>9}  (continuous hidden states)")
print(f"{'SEED-X (fast path)':<24} {64:>12} {1:>15} {'none':>9}")
for name, (n, codebook) in others.items():
    print(f"{name:<24} {n:>12} {n:>15} {codebook:>9}")

# %%
assert counts[True] == 1 and counts[False] == 1 + 64 + 1
assert torch.equal(outs[True].sequences, outs[False].sequences)
assert others["Janus"][0] == 576 and others["Chameleon"][0] == 1024
assert others["Janus"][1] == 16384 and others["Chameleon"][1] == 8192
print(f"claim #11 holds for the LLM part: 65 decoding steps (or 1 pass) against 576 (Janus) or 1024 (Chameleon), "
      f"{576 / 65:.1f}x and {1024 / 65:.1f}x fewer; 8192 is Chameleon's codebook size, Janus's is 16384")

# %% [markdown]
# Timing, on this machine (output varies from run to run, so it is not checked). The decoding time per
# step is measured on seedx-tiny; the Janus and Chameleon rows are that same cost per step times their
# token counts, i.e. what *this* LLM would need if it wrote their number of tokens. The last line is the
# other half of the bill: SEED-X still has to run a diffusion model over its 64 features, which the
# VQ-token models replace by a single decoder pass.

# %%
# NBVAL_IGNORE_OUTPUT
def timed(fn, repeat=5):
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


t_fast = timed(lambda: lvlm.generate(ids, max_new_tokens=65, fast_forced_block=True))
t_slow = timed(lambda: lvlm.generate(ids, max_new_tokens=65, fast_forced_block=False), repeat=3)
per_step = t_slow / 66
t_draw = timed(lambda: model.draw(a.features, num_inference_steps=25, seed=0), repeat=1)
print(f"LLM, block in one pass:     {1000 * t_fast:7.1f} ms per image")
print(f"LLM, 65 steps:              {1000 * t_slow:7.1f} ms per image ({1000 * per_step:.2f} ms per step)")
print(f"same LLM, 576 steps (Janus):  ~{1000 * per_step * 576:5.0f} ms per image")
print(f"same LLM, 1024 steps (Chameleon): ~{1000 * per_step * 1024:5.0f} ms per image")
print(f"de-tokenizer, 25 Euler steps: {1000 * t_draw:7.1f} ms per image")

# %% [markdown]
# ## Exercises
# 1. In section 2, change `toy_scores` so that every score is positive. Does the faithful processor still
#    let a blocked token win in row 0? What is the smallest constant you must subtract to make it win?
# 2. Sample the block with the faithful processor at temperature 3.0 and top-p 1.0
#    (`lvlm.generate(ids, max_new_tokens=65, do_sample=True, temperature=3.0, ...)`). Does the block
#    always complete? Look at `out.incomplete_blocks` and explain with the `max + 10` formula.
# 3. Give the prompt `caption + "<patch><img_00000><img_00001>"` to both processor modes with
#    `fast_forced_block=False` and `max_new_tokens=70`. Which mode goes on writing image tokens, and how
#    does its block end: with `</patch>` or with `</img>`? Why?
# 4. Claim #11 counts decoding steps. Add up the *whole* cost of one SEED-X image on this machine (LLM +
#    de-tokenizer at 25 steps) and compare it with the 1024-step estimate. Which part dominates?
#
# <details><summary>Answer 1</summary>
#
# Outside a block the faithful processor *assigns* `0.0` to the blocked tokens. With every score positive,
# `0.0` is below all the words, so a word wins row 0. Subtracting a constant `c` from the row changes nothing
# the model believes (the softmax ignores it) but moves the words below zero once `c` exceeds the largest
# unblocked score; at exactly that value a word ties with the blocked tokens at `0.0` and `argmax` keeps the
# lower id. So the smallest constant is "just above the largest unblocked score". The first cell below builds
# a positive row 0, prints that threshold and checks just below and just above it.
# </details>
#
# <details><summary>Answer 2</summary>
#
# Inside a block the faithful processor sets the forced token to `max + 10`; temperature `T` divides all
# scores, so the forced token leads by `10 / T` only: at `T = 3` by about 3.3 nats, and every token near the
# raw maximum keeps a real chance. The probability of staying on the forced token at one step is
# `1 / (1 + sum_j exp((s_j - max - 10) / T))`, and a block needs 65 such steps in a row. The second cell computes
# that product on the raw scores recorded in section 1 and samples a few blocks; `incomplete_blocks` shows
# how far each got.
# </details>
#
# <details><summary>Answer 3</summary>
#
# The faithful processor reads only the last token. `<img_00001>` is in its list, so it forces `<img_00002>`,
# then the next, and at the end the only closer it knows, `</img>` — even though `<patch>` opened the block.
# The strict processor looks for the last `<img>` followed by the image tokens in order; there is none, so it
# treats the row as outside a block and bans the image tokens. The third cell prints both continuations.
# </details>
#
# <details><summary>Answer 4</summary>
#
# One SEED-X image costs the LLM's pass over the prompt and the block plus 25 de-tokenizer steps, each a
# U-Net call on two inputs (guidance). Add the two measured times of section 7 and compare the LLM's part with
# the de-tokenizer's and with `1024 × per_step`. The last cell prints the shares (a timing: its output varies
# from run to run and is not checked).
# </details>

# %%
positive = toy_scores - toy_scores.min() + 0.5                       # every score > 0
faithful_toy = G.AutoImageTokenGenerationProcessor(token_ids=toy, num_img_gen_tokens=3)
unblocked_toy = [i for i in range(len(toy_names)) if i not in blocked_toy]
print("all positive: faithful picks", toy_names[int(faithful_toy(toy_ids, positive)[0].argmax())], "in row 0")
threshold = positive[0, unblocked_toy].max().item()
print(f"largest unblocked score in row 0: {threshold:.2f}")
for c in (threshold, threshold + 0.01):
    pick = int(faithful_toy(toy_ids, positive - c)[0].argmax())
    print(f"subtract {c:.2f}: faithful picks {toy_names[pick]} (a blocked token: {pick in blocked_toy})")

# %%
T_hot = 3.0
forced_rows = torch.stack(raw.rows)                                  # [65, V] raw scores of section 1
forced_ids = torch.tensor([d["forced_id"] for d in decisions])
nudged = forced_rows.clone()
nudged[torch.arange(len(nudged)), forced_ids] = forced_rows.max(-1).values + 10
p_stay = (nudged / T_hot).softmax(-1)[torch.arange(len(nudged)), forced_ids]
print(f"T = {T_hot}: P(forced token) per step between {p_stay.min():.3f} and {p_stay.max():.3f}; "
      f"P(all 65 steps stay on the block) = {p_stay.prod():.1e}")
for k in range(3):
    o = lvlm.generate(ids, max_new_tokens=65, do_sample=True, temperature=T_hot, top_p=1.0,
                      generator=torch.Generator().manual_seed(k))
    print(f"sample {k}: complete images {len(o.images[0])}, cut blocks {len(o.incomplete_blocks[0])} "
          f"with {[b.n_tokens for b in o.incomplete_blocks[0]]} image tokens")

# %%
patch_ids = torch.tensor([model.encode_ids(caption + "<patch><img_00000><img_00001>")])
for mode in G.MODES:
    o = lvlm.generate(patch_ids, max_new_tokens=70, processor_mode=mode, fast_forced_block=False)
    written = tok.convert_ids_to_tokens(o.new_tokens[0].tolist())
    n_img = sum(w.startswith("<img_") for w in written)
    closer = next((w for w in written if w in ("</img>", "</patch>")), None)
    print(f"{mode:>8}: {n_img} image tokens written, first closer {closer}; starts {' '.join(written[:4])} …")

# %%
# NBVAL_IGNORE_OUTPUT
whole = t_fast + t_draw
print(f"one SEED-X-style image here: LLM {1000 * t_fast:.0f} ms + de-tokenizer {1000 * t_draw:.0f} ms "
      f"= {1000 * whole:.0f} ms; the de-tokenizer's share {t_draw / whole:.0%}")
print(f"this LLM writing 1024 tokens one by one: ~{1000 * per_step * 1024:.0f} ms "
      f"({per_step * 1024 / whole:.1f} times SEED-X's whole image)")

# %% [markdown]
# ## Build it yourself
# ### Exercise 5.1 · the forcing rule, faithful and strict ★★★ (about 40 min)
# Write `force(input_ids, scores, token_ids, mode)`: given the ids so far `[B, L]` and the next-token scores
# `[B, V]`, return new scores as `AutoImageTokenGenerationProcessor` does, with `n = len(token_ids.img)`
# image tokens per block and the forced sequence `F = [<img>, <img_00000>, …, <img_{n-1}>, </img>]`.
#
# * **faithful** (published): read the state from the *last token only*: if it is `F[k]` for some `k < n + 1`,
#   the row is in a block and the token to force is `F[k + 1]`; its score becomes the row's max + 10
#   (nothing else changes). Otherwise every block token (`F[1:]`) gets the score `0.0`.
# * **strict**: a row is in a block only when its last `<img>` is followed by exactly `<img_00000> … <img_{k-1}>`
#   (`k <= n`); then everything is `-inf` except the forced token (max + 10). Outside a block, the block
#   tokens get `-inf`.
#
# Leave out the budget rule (`max_length`); the grader does not use it.
#
# <details><summary>Hint 1: faithful</summary>
#
# `F.index(last_token)` is `k`; "the row's max" is taken over the *unprocessed* scores.
# </details>
#
# <details><summary>Hint 2: strict</summary>
#
# An open block fits in the last `n + 1` tokens: look for the last `<img>` there and compare what follows
# it with the start of `token_ids.img`. A stray `<img_00005>` after text, or a `<patch>` block, is outside.
# </details>

# %%
def force(input_ids, scores, token_ids, mode):
    """ids [B, L], scores [B, V] -> new scores [B, V] (the input left as it was)."""
    # BEGIN SOLUTION: the forcing rule (faithful and strict)
    n = len(token_ids.img)
    F = [token_ids.boi, *token_ids.img, token_ids.eoi]
    out = scores.clone()
    for b, row in enumerate(input_ids.tolist()):
        k = -1                                                  # -1: outside a block
        if mode == "faithful":
            if row and row[-1] in F[:-1]:
                k = F.index(row[-1])
        else:
            tail = row[-(n + 1):]
            if token_ids.boi in tail:
                body = tail[len(tail) - tail[::-1].index(token_ids.boi):]
                if body == list(token_ids.img[: len(body)]):
                    k = len(body)
        if k < 0:
            out[b, F[1:]] = float("-inf") if mode == "strict" else 0.0
        else:
            top = scores[b].max()
            if mode == "strict":
                out[b] = float("-inf")
            out[b, F[k + 1]] = top + 10
    return out
    # END SOLUTION


# %%
from seedx_lab.lab import checks

checks.check_forcing_rule(force, mode="faithful")
checks.check_forcing_rule(force, mode="strict")

# %% [markdown]
# **Your processor in the real pipeline.** seedx-tiny draws held-out captions with `force` as its only logits
# processor, and asked about *every* token: the fast path that feeds the known block in one pass is off, so
# each of the 65 block tokens is chosen by your rule. It also describes a picture (strict mode, as
# `describe` uses).

# %%
for seed in (0, 1):
    checks.draw_with(model, seed=seed, num_inference_steps=10, forcing_rule=force)
run = checks.describe_with(model, seed=0, forcing_rule=force)

# %% [markdown]
# ## What you should now know
# 1. After `<img>`, a logits processor forces the 64 image tokens and `</img>`; the published one reads only the last token.
# 2. Its 0.0 "ban" is not a ban when scores are negative; the strict mode uses -inf and reads the whole block.
# 3. You can write both rules and run seedx-tiny with yours as its only processor.
