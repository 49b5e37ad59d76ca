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
# # 10 · Why does the model write `<img>`? Interventions, attention and causal probes
#
# Notebook 07 measured *where* P(`<img>`) rises along a story and through the layers (the logit lens).
# That is a correlation. Here we change the model's activations while it runs and watch what happens, the
# way TransformerLens or nnsight do it for text-only LLMs, with the same names `seedx_lab.trace` captures:
#
# ```python
# with seedx_lab.trace(model, capture=["llm.final"], edits={"llm.layers.2.hidden": patch_from(t_clean)}) as t:
#     model.lvlm.llm(input_ids=corrupt_ids)
# ```
#
# An edit is a function `(value, ctx) -> value` or a helper (`replace`, `add`, `scale`, `zero`,
# `patch_from`, `knockout`), at chosen absolute positions; it works in a prompt pass, across the KV-cache
# decoding loop and inside the forced image block, and the capture of the same run sees the edited value.
#
# You will:
# 1. look at the LLM's own attention: which earlier tokens the position before `<img>` reads;
# 2. **activation patching**: move one hidden state from a prompt that opens a picture into a matched one
#    that does not (and back), for every layer and position;
# 3. **attention knockout**: forbid the last position to read the trigger words; does the decision survive?
# 4. **linear probes**: can a linear read-out of each layer tell "`<img>` comes next" on stories it was not
#    fitted on, better than the same probe fitted on shuffled labels?
# 5. **steering**: add the "`<img>` direction" to the residual stream and measure the dose-response;
# 6. **calibration**: are the model's P(`<img>`) honest probabilities?
# 7. **sampling**: with sampling on, what irregular image tokens does the published processor let through?
#
# Every finding below is printed from its measurement: the sentence itself is chosen by the numbers.

# %%
# %matplotlib inline
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch

import seedx_lab
from seedx_lab import probes, widgets
from seedx_lab import world as W
from seedx_lab.lab.trace import knockout, patch_from, trace

warnings.filterwarnings("ignore", category=FutureWarning)   # a transformers deprecation notice, not ours
warnings.filterwarnings("ignore", category=UserWarning, module=r"seedx_lab\.")
torch.manual_seed(0)
plt.rcParams["figure.dpi"] = 72
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"     # the same notebook runs on a GPU
model = seedx_lab.load("seedx-tiny", device=DEVICE)
tok, tid = model.tokenizer, model.token_ids
L = model.config.llm.num_hidden_layers
print(f"LLM: {L} layers, {model.config.llm.num_attention_heads} heads; trigger phrases: {W.TRIGGER_PHRASES}")

CLEAN = "we start with a big red circle on the left . it looks like this :"
CORRUPT = "we start with a big red circle on the left . it looks like this ."


def p_img(prompt, edits=None):
    """P(<img> next) at the end of ``prompt`` (raw scores, before the processor), under ``edits``."""
    with trace(model, capture=[], edits=edits):
        logits = model.lvlm.llm(input_ids=torch.tensor([model.encode_ids(prompt)])).logits
    return logits[0, -1].float().softmax(-1)[tid.boi].item()


print(f"P(<img>) after the clean prompt {p_img(CLEAN):.3f}, after the corrupt one {p_img(CORRUPT):.3f}")

# %% [markdown]
# ## 1. What the position before `<img>` reads
# `llm.layers.{i}.attn` is captured only when a pattern names it (`capture=["llm.layers.*.attn"]`): the trace
# switches the LLM to its eager attention for the run (the fused kernel does not return weights) and back.
# The viewer shows, for the last position, its attention over the prompt in every layer (top) and in one
# layer (bottom). Look for: does the last layer read the trigger words, the object, or mostly itself?

# %%
view = widgets.attention_viewer(model, CLEAN, which="llm")
row = view.row(layer=L - 1)
top = np.argsort(-row)[:3]
print("last layer, mean over heads, the last position reads most:",
      ", ".join(f"'{view.tokens[i]}' (pos {i}) {row[i]:.2f}" for i in top))
view

# %% [markdown]
# ## 2. Activation patching
# Two prompts of the same length that differ in the last token: the clean one ends in the trigger `:`, the
# corrupt one in `.`. For every site (the embeddings, each layer's output) and position, the clean run's
# hidden state replaces the corrupt run's at that one place, and we read logit(`<img>`) at the end, as
# `(patched - corrupt) / (clean - corrupt)`: 1 means that single state carries the whole difference.
# The other direction patches the corrupt state into the clean run. All cells of a direction are rows of one
# batch (one forward pass), not one pass per cell.

# %%
grid = probes.activation_patching(model, CLEAN, CORRUPT)
print(f"logit(<img>): clean {grid.logit_clean:.2f}, corrupt {grid.logit_corrupt:.2f}")
last = grid.denoise[:, -1]
print("clean -> corrupt at the last position, per site:", ", ".join(f"{s} {v:.2f}" for s, v in zip(grid.sites, last)))
elsewhere = float(np.abs(grid.denoise[:, :-1]).max())
print(f"largest |effect| at any earlier position: {elsewhere:.3f}")
# the batched grid against plain one-cell runs, at three cells
for s, pos in ((0, len(grid.clean_ids) - 1), (2, len(grid.clean_ids) - 1), (L, 3)):
    name = "llm.embed" if s == 0 else f"llm.layers.{s - 1}.hidden"
    with trace(model, capture=[name]) as src:
        model.lvlm.llm(input_ids=torch.tensor([grid.clean_ids]))
    with trace(model, capture=[], edits={name: patch_from(src, positions=[pos])}):
        one = model.lvlm.llm(input_ids=torch.tensor([grid.corrupt_ids])).logits[0, -1, tid.boi].item()
    assert abs(one - grid.raw_denoise[s, pos]) < 1e-4, (s, pos)
print("three cells checked against one-cell runs: equal to 1e-4")
grid.plot()

# %% [markdown]
# With prompts that differ only in their last token, every earlier position holds the same state in both
# runs, so only the last column can move. A pair that differs earlier asks a sharper question: here the
# sentence before the trigger changes (`.` → `,`), the trigger stays.

# %%
CLEAN2 = "we start with a big red circle on the left . here it is :"
CORRUPT2 = "we start with a big red circle on the left , here it is :"
grid2 = probes.activation_patching(model, CLEAN2, CORRUPT2)
gap = grid2.logit_clean - grid2.logit_corrupt
print(f"pair 2: logit(<img>) clean {grid2.logit_clean:.2f}, corrupt {grid2.logit_corrupt:.2f} (gap {gap:.2f}); "
      f"P(<img>) {p_img(CLEAN2):.3f} vs {p_img(CORRUPT2):.3f}")
if abs(gap) > 1.0:
    best = grid2.top(3)
    print("cells that restore most of it:", "; ".join(f"{s} at '{t}' (pos {p}) {v:.2f}" for s, p, t, v in best))
else:
    print(f"the '.' -> ',' change moves logit(<img>) by {gap:.2f} only: too small a difference to locate")
grid2.plot()

# %% [markdown]
# ## 3. Attention knockout
# If the model decides `<img>` *because of* the trigger words, forbidding the last position to attend to
# them should break the decision. `knockout(keys)` edits the attention mask of the chosen layers (a position's
# attention to itself always stays, so the softmax is defined); each window of layers is one row of a batch.
# A control knocks out as many words of the object description instead.

# %%
trig = probes.attention_knockout(model, CLEAN, "it looks like this", windows=[[i] for i in range(L)] + [list(range(L))])
ctrl = probes.attention_knockout(model, CLEAN, "big red circle on", windows=[[i] for i in range(L)] + [list(range(L))])
print(f"P(<img>) with nothing blocked: {trig.p_base:.3f}")
for name, k in (("trigger words", trig), ("object words (control)", ctrl)):
    print(f"  {name:>23s} {[tok.convert_ids_to_tokens(model.encode_ids(CLEAN))[i] for i in k.keys]}: "
          + ", ".join(f"layer {w[0]}: {p:.3f}" if len(w) == 1 else f"all layers: {p:.3f}"
                      for w, p in zip(k.windows, k.p_knocked)))
drop_trigger, drop_ctrl = trig.drop[-1], ctrl.drop[-1]
if drop_trigger > 0.5 and drop_trigger > 2 * max(drop_ctrl, 0.01):
    print(f"VERDICT: the trigger words carry the decision (P drops by {drop_trigger:.3f}, control {drop_ctrl:.3f})")
else:
    print(f"VERDICT: the trigger words do not carry the decision on their own: blocking them in every layer moves "
          f"P(<img>) by {drop_trigger:.3f} (control {drop_ctrl:.3f})")
everything = probes.attention_knockout(model, CLEAN, range(len(model.encode_ids(CLEAN)) - 1), windows=[list(range(L))])
print(f"blocking every earlier token in every layer leaves the ':' reading only itself: P(<img>) = "
      f"{everything.p_knocked[0]:.3f}, against {trig.p_base:.3f} with its context")
trig.plot()

# %% [markdown]
# ## 4. Linear probes: is "`<img>` comes next" linearly readable, and where?
# Hidden states at every position the model chooses freely in 16 training stories fit one logistic probe per
# site (torch, class-balanced); it is scored (balanced accuracy) on 16 held-out test-split stories. The
# control fits the same probe on permuted labels: it should sit near 0.5.

# %%
train = probes.story_states(model, [W.story_sample(s, "train") for s in range(16)])
test = probes.story_states(model, [W.story_sample(s, "test") for s in range(16)])
lp = probes.linear_probes(model, train, test, shuffles=3, steps=60)
print(f"train: {lp.n_train} positions ({lp.pos_train} before <img>); held-out: {lp.n_test} ({lp.pos_test} before <img>)")
for s, a, c in zip(lp.sites, lp.acc, lp.acc_shuffled):
    print(f"  {s:>8s}: held-out balanced accuracy {a:.3f}   shuffled-label control {c:.3f}")
first = next((s for s, a in zip(lp.sites, lp.acc) if a >= 0.95), None)
print("first site where the probe reaches 0.95 on held-out stories:", first)
assert np.all(lp.acc > lp.acc_shuffled)
lp.plot()

# %% [markdown]
# ## 5. Steering
# The difference of the mean state before `<img>` and the mean state elsewhere (layer 1, training
# positions) is a direction. Adding a multiple of it at the last position of every pass should raise
# P(`<img>`) after plain text, and subtracting it should suppress `<img>` after a trigger. The greedy runs on
# plain text count how many open a picture (false `<img>`).

# %%
trigger_prompts = [W.story_sample(s, "test").segments[0] for s in range(5)]
plain_prompts = [W.text_only_sample(s, "test").segments[0] for s in range(5)]
st = probes.steering(model, train, trigger_prompts, plain_prompts, layer=1, doses=(-2, -1, 0, 1, 2), max_new_tokens=6)
for d, a, b, f in zip(st.doses, st.p_trigger, st.p_plain, st.false_boi):
    print(f"  dose {d:+.0f}: P(<img>) after a trigger {a:.3f}, after plain text {b:.4f}, "
          f"plain runs that open <img> {f}/{st.n_plain}")
rises = bool(np.all(np.diff(st.p_plain) >= -1e-6))
print("P(<img>) after plain text rises with the dose at every step:", rises)
st.plot()

# %% [markdown]
# ## 6. Calibration
# Over the held-out positions of section 4: are the model's P(`<img>`) honest? The reliability diagram bins
# the predictions and compares each bin's mean with how often `<img>` really came next (the count is by
# each point); the precision-recall curve ranks the positions by P(`<img>`).

# %%
cal = probes.calibration(model, test)
print(f"n = {len(cal.y)} positions, {int(cal.y.sum())} followed by <img>; ECE {cal.ece:.4f}; "
      f"average precision {cal.average_precision:.3f}")
for lo, c, mp, fr in zip(cal.bin_edges[:-1], cal.bin_count, cal.bin_p, cal.bin_freq):
    if c:
        print(f"  P in [{lo:.1f}, {lo + 0.1:.1f}): n={c:4d}, mean P {mp:.3f}, observed {fr:.3f}")
cal.plot()

# %% [markdown]
# ## 7. The sampling regime
# Notebook 07 decodes greedily. With sampling on, the published (`faithful`) processor only forces tokens
# inside a block and sets blocked tokens to `0.0` outside it, so several irregular things can happen; each is
# counted per run, with its 95 % interval: a stray `</img>`, an image id beyond the 64 a block uses
# (`<img_00064…99>`) outside a block, a block that opens but is not drawn through while the run goes on, and a
# block still open when the token budget runs out (not the processor's doing).

# %%
sr = probes.sampling_regime(model, trigger_prompts[:4], samples=3, max_new_tokens=90, seed=0)
print(f"{sr.runs} sampled runs ({len(trigger_prompts[:4])} prompts x 3), {sr.new_tokens} new tokens, "
      f"{sr.tokens['blocks']} blocks opened")
print("\n".join(sr.lines()))
sr.plot()

# %% [markdown]
# ## 8. Explore
# Edit either prompt (they must have the same number of tokens), pick a cell (site, position) and see the
# continuation with that one state patched, and P(`<img>`). In a saved notebook the picture is static.

# %%
explorer = widgets.patching_explorer(model, CLEAN, CORRUPT)
explorer

# %% [markdown]
# ## What you should now know
# 1. Correlation (the logit lens) and cause differ: patching, knockout and steering change activations and watch P(`<img>`) move.
# 2. `seedx_lab.trace` edits any captured site at chosen positions, in a prompt pass, the KV-cache loop or a forced block.
# 3. Linear probes need a shuffled-label baseline, and probabilities need a calibration check, before either is believed.
