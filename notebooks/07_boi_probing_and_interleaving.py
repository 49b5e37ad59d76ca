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
# # 07 · When does the model start an image? `<img>` probing and interleaved generation
#
# **What this notebook teaches.** In the text-to-image script of SEED-X the prompt already ends in `<img>`,
# so the image is *given*. But SEED-X can also write stories with pictures in them ("now add a star. Here it
# is: [picture]"). Then nobody puts `<img>` in the prompt: the model has to **predict** it, like any other
# token, and the processor of notebook 05 takes over once it has.
#
# Can it? During training only one token of each generated image block carries a language-model label: the
# `<img>` that opens it. So the model is taught *where* pictures go. The synthetic stories of seedx-tiny make
# this easy to check: a picture always follows one of two trigger phrases (`here it is :` and
# `it looks like this :`) and nothing else.
#
# You will:
# 1. read P(`<img>` next) at every position of a held-out story, and through the *logit lens* at every layer;
# 2. test **claim #3** ("BOI is given in the prompt, not predicted") on 20 held-out stories;
# 3. test **claim #5** (`<img>` itself is never blocked);
# 4. test **claim #6** ("a second image cannot be started automatically") with interleaved generation;
# 5. check the opposite mistake: pictures where there should be none (text-only samples);
# 6. compare the published `0.0` blocking with `-inf` on whole generations.

# %%
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %%
import re
import textwrap
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch

import seedx_lab
from seedx_lab import evaluate, probes, widgets
from seedx_lab import generation as G
from seedx_lab import world as W
from seedx_lab.lab.claims import wilson
from seedx_lab.tokens import find_image_blocks
from seedx_lab.sequences import encode_pieces, story_pieces

warnings.filterwarnings("ignore", category=FutureWarning)   # a transformers deprecation notice, not ours
# the faithful processor warns when a block may be cut off by max_new_tokens (section 6 explains it)
warnings.filterwarnings("ignore", category=UserWarning, module=r"seedx_lab\.")
torch.manual_seed(0)
plt.rcParams["figure.dpi"] = 72
plt.rcParams["image.interpolation"] = "nearest"      # show the real pixels (and keep the notebook small)
model = seedx_lab.load("seedx-tiny", device=DEVICE)
lvlm, tok, tid = model.lvlm, model.tokenizer, model.token_ids
print("trigger phrases:", W.TRIGGER_PHRASES)


def story_ids(segments):
    """A story as the model reads it in training: text, and a full <img> ... </img> block per picture."""
    return encode_pieces(model, story_pieces(segments))[0]


def free_positions(ids):
    """Positions whose next token the model chooses itself (not inside a forced image block)."""
    forced = set()
    for blk in find_image_blocks(ids, tid):
        forced.update(range(blk.start, blk.end - 1))
    return [i for i in range(len(ids) - 1) if i not in forced]


# %% [markdown]
# ## 1. P(`<img>`) along a held-out story
# `probes.boi_trace` runs the story through the model once and reads, at every position, the probability
# that the next token is `<img>`: from the final layer, and from every earlier layer through the *logit lens*
# (apply the final norm and the output head to that layer's residual stream, as if the model stopped there).
#
# The 64 image tokens of each picture are folded into one `[picture]` column in the plot below.

# %%
story = W.story_sample(3, "test")
ids = story_ids(story.segments)
bt = probes.boi_trace(model, ids)
for seg in story.segments:
    print("  ", seg if isinstance(seg, str) else "[picture: " + W.describe_scene(seg) + "]")

keep = [i for i in range(len(ids)) if ids[i] not in tid.img and ids[i] != tid.boi]
labels = ["[picture]" if ids[i] == tid.eoi else bt.tokens[i] for i in keep]
fig, axes = plt.subplots(2, 1, figsize=(12, 4.6), sharex=True, gridspec_kw=dict(height_ratios=[2.2, 1]))
im = axes[0].imshow(bt.p_lens[:, keep], aspect="auto", cmap="magma", vmin=0, vmax=1, interpolation="nearest")
axes[0].set_yticks(range(len(bt.layer_names)), bt.layer_names, fontsize=8)
axes[0].set_title("logit lens: P(<img> next), read from each layer", fontsize=10)
fig.colorbar(im, ax=axes, fraction=0.02)
axes[1].plot(range(len(keep)), bt.p_final[keep], "o-", ms=3, color="tab:red")
axes[1].set_ylabel("P(<img>)\nfinal layer")
axes[1].set_ylim(-0.03, 1.03)
axes[1].set_xticks(range(len(keep)), labels, rotation=90, fontsize=8)
plt.show()

# %% [markdown]
# Look for: is P(`<img>`) near zero everywhere except right after a trigger phrase (the `:`)? In which layer
# does the lens first show the decision? Section 2 counts both on 20 stories. The same picture, interactive: edit the
# prompt in JupyterLab, press *Generate* and see what the model writes under either blocking mode.

# %%
explorer = widgets.boi_explorer(model, story.segments[0], max_new_tokens=80, max_images=2, num_inference_steps=10)
explorer

# %% [markdown]
# ## 2. Claim #3 — is `<img>` given, or predicted?
# For 20 held-out stories, `evaluate.boi_predictions` reads the story token by token (teacher forcing) and,
# at every position where the model chooses freely, asks whether its greedy choice after the published
# processor is `<img>`. Compared with where the story really has a picture this gives precision and recall.

# %%
N_STORIES = 20
tp = fp = fn = 0
after, elsewhere, lens_after, lens_else = [], [], [], []
phrase_after = []                                           # the trigger phrase before each <img> (exercise 3)
for s in range(N_STORIES):
    segs = W.story_sample(s, "test").segments
    pred, act = evaluate.boi_predictions(model, segs)
    tp += sum(p and a for p, a in zip(pred, act))
    fp += sum(p and not a for p, a in zip(pred, act))
    fn += sum(a and not p for p, a in zip(pred, act))
    sid = story_ids(segs)
    b = probes.boi_trace(model, sid)
    for i in free_positions(sid):
        nxt_is_boi = sid[i + 1] == tid.boi
        (after if nxt_is_boi else elsewhere).append(b.p_final[i])
        (lens_after if nxt_is_boi else lens_else).append(b.p_lens[:, i])
        if nxt_is_boi:
            words = W.tokenize_words(model.decode(sid[: i + 1]))
            phrase_after.append(next((p for p in W.TRIGGER_PHRASES
                                      if words[-len(W.tokenize_words(p)):] == W.tokenize_words(p)), None))
precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
after, elsewhere = np.array(after), np.array(elsewhere)
print(f"pictures in the stories: {tp + fn}; predicted <img> at {tp + fp} positions; hits {tp}")
print(f"precision {precision:.3f}, recall {recall:.3f}")
print(f"P(<img>) right after a trigger: mean {after.mean():.3f}, min {after.min():.3f}  ({len(after)} positions)")
print(f"P(<img>) anywhere else:         mean {elsewhere.mean():.5f}, max {elsewhere.max():.3f}  ({len(elsewhere)} positions)")

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
bins = np.logspace(-6, 0, 40)
axes[0].hist(np.clip(elsewhere, 1e-6, 1), bins=bins, alpha=0.7, label="elsewhere", color="tab:grey")
axes[0].hist(np.clip(after, 1e-6, 1), bins=bins, alpha=0.8, label="after a trigger", color="tab:red")
axes[0].set_xscale("log")
axes[0].set_yscale("log")
axes[0].set_xlabel("P(<img> next)")
axes[0].set_ylabel("positions")
axes[0].legend(fontsize=8)
axes[0].set_title("20 held-out stories", fontsize=10)
la, le = np.array(lens_after).mean(0), np.array(lens_else).mean(0)
axes[1].plot(la, "o-", color="tab:red", label="after a trigger")
axes[1].plot(le, "o-", color="tab:grey", label="elsewhere")
axes[1].set_xticks(range(len(bt.layer_names)), bt.layer_names, rotation=30, fontsize=8)
axes[1].set_ylabel("mean P(<img>)")
axes[1].set_title("logit lens: where the decision forms", fontsize=10)
axes[1].legend(fontsize=8)
plt.tight_layout()
plt.show()

# %%
assert recall >= 0.9 and precision >= 0.9
assert after.mean() > 0.5 and elsewhere.mean() < 0.05
print(f"claim #3 is false for a trained SEED-X-style model: <img> is predicted (recall {recall:.2f}, "
      f"precision {precision:.2f}), not only given in the prompt")

# %% [markdown]
# ## 3. Claim #5 — `<img>` itself is never blocked
# The processor blocks `<img_00000> ... <img_00063>` and `</img>` outside a block, but not the opener. We
# check the list, and we run both modes on real scores: the score of `<img>` comes out untouched.

# %%
blocked = G.blocked_token_ids(tid, 64)
print("blocked outside a block:", len(blocked), "tokens:", tok.convert_ids_to_tokens(blocked[:2]), "...",
      tok.convert_ids_to_tokens(blocked[-2:]))
print("<img> among them:", tid.boi in blocked)
text_prefix = torch.tensor([ids[: free_positions(ids)[5] + 1]])
scores = lvlm(text_prefix)["logits"][:, -1].float()
for mode in G.MODES:
    p = G.AutoImageTokenGenerationProcessor(token_ids=tid, mode=mode)
    out = p(text_prefix, scores)
    print(f"{mode:>8}: state {G.STATE_NAMES[int(p.states(text_prefix).state[0])]}, <img> score "
          f"{scores[0, tid.boi].item():.3f} -> {out[0, tid.boi].item():.3f}, "
          f"<img_00000> score {scores[0, tid.img[0]].item():.3f} -> {out[0, tid.img[0]].item():.3f}")

# %%
assert tid.boi not in blocked and tid.eoi in blocked and set(tid.img) <= set(blocked)
for mode in G.MODES:
    out = G.AutoImageTokenGenerationProcessor(token_ids=tid, mode=mode)(text_prefix, scores)
    assert out[0, tid.boi] == scores[0, tid.boi]
print("claim #5 holds: <img> is never blocked, in either mode; the model alone decides when a picture starts")

# %% [markdown]
# ## 4. Claim #6 — can a second image start automatically?
# Nothing in the processor stops a second `<img>`: after `</img>` the row is outside a block again and
# `<img>` is as free as any word. Whether a second picture comes depends on what the model learned. We give
# it the first step of a drawing lesson and let `probes.interleave` run greedy generation; every `<img>` in
# the output is the model's own prediction.

# %%
opening = "a drawing lesson . let us draw a big red circle on the left . it looks like this :"
# the pictures are only counted here, not shown: one diffusion step each is enough (the words do not depend on it)
greedy = probes.interleave(model, opening, max_images=3, max_new_tokens=240, num_inference_steps=1, seed=0)
print("prompt:", opening)
print("greedy:", greedy.text, "| pictures:", len(greedy.images), "| P(<img>):", [round(p, 3) for p in greedy.p_boi])
print(f"greedy decoding drew {len(greedy.images)} picture(s): "
      + ("it went on after the first picture by itself" if len(greedy.images) >= 2 else "it ended after the first"))

# %% [markdown]
# How many pictures did greedy decoding draw, and did it go on after the first? The line above answers.
# After a picture the training stories go on with "now add ...", "next , ...", "then add ..." or end with
# "the end .": whether a second `<img>` comes is the model's choice, not a rule. Let it *sample* its words
# instead (`do_sample=True`, seeded), eight times: every `<img>` below is still the model's own prediction,
# and the processor only completes the blocks.

# %%
def sampled_run(s, steps):
    torch.manual_seed(s)                                    # the sampled words (drawing has its own generator)
    return probes.interleave(model, opening, max_images=3, max_new_tokens=240, num_inference_steps=steps, seed=0,
                             do_sample=True)


runs = [sampled_run(s, steps=1) for s in range(8)]          # counted only: one diffusion step per picture
for s, r in enumerate(runs):
    print(f"sample {s}: {len(r.images)} picture(s), P(<img>) {[round(p, 3) for p in r.p_boi]} | {r.text[:90]}")
several = [s for s, r in enumerate(runs) if len(r.images) >= 2]
print(f"runs with two or more pictures: {len(several)} of {len(runs)}")
shown = several[0] if several else 0
run = sampled_run(shown, steps=20)                          # the run shown below, drawn properly
assert run.text == runs[shown].text                         # same words: the step count only changes the pixels

parts = [opening] + run.segments
fig, axes = plt.subplots(1, len(parts), figsize=(2.3 * len(parts), 2.4))
for ax, part in zip(np.atleast_1d(axes), parts):
    ax.axis("off")
    if isinstance(part, str):
        ax.text(0, 0.5, textwrap.fill(part, 22), fontsize=9, va="center", family="monospace")
    else:
        ax.imshow(part)
plt.tight_layout()
plt.show()

# %%
assert len(greedy.images) >= 1 and len(several) >= 1
assert all(p > 0.5 for r in runs for p in r.p_boi)
print(f"claim #6 is false: in {len(several)} of {len(runs)} sampled runs the model started a second picture by "
      "itself, every picture with P(<img>) > 0.5")

# %% [markdown]
# One lucky prompt is not a measurement. We take the opening of 10 held-out stories (their first text
# segment, which ends in a trigger phrase) and count the pictures greedy generation produces, without
# drawing them (`lvlm.generate` stops at the LLM, at most 3 blocks). The story itself had 1 to 3 pictures;
# the model only sees its first step, so it cannot know how many; the point is whether it goes on after the
# first picture at all.

# %%
print(f"{'story':>5} {'in story':>8} {'generated':>9}  continuation (pictures shown as [img])")
counts = []
for s in range(10):
    sm = W.story_sample(s, "test")
    prompt_ids = torch.tensor([model.encode_ids(sm.segments[0])])
    o = lvlm.generate(prompt_ids, max_new_tokens=240, max_blocks=3, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    n_gen = len(o.images[0])
    counts.append((sm.n_images, n_gen))
    text = model.decode(o.new_tokens[0]).replace("<img> </img>", "[img]")
    print(f"{s:>5} {sm.n_images:>8} {n_gen:>9}  {text[:80]}")
more_than_one = sum(g >= 2 for _, g in counts)
print(f"openings followed by at least one picture: {sum(g >= 1 for _, g in counts)} of 10; "
      f"by two or more: {more_than_one}")

# %%
assert all(g >= 1 for _, g in counts)
if more_than_one:
    print("after </img> the model is free to open another block, and greedy decoding sometimes does")
else:
    print("greedy decoding closes each opening after one picture; the second pictures of section 4 came from "
          "sampling, so the model does open another block when it is not forced to be greedy")

# %% [markdown]
# ## 5. The opposite mistake: pictures in plain text
# If `<img>` is predicted, it could also be predicted where it does not belong. The text-only samples of the
# shape world talk about the same shapes and colours but never use a trigger phrase. For 20 of them we check
# every position while reading (teacher forcing) and a greedy continuation of 16 tokens, as
# `evaluate.boi_scores` does: does `<img>` ever win?

# %%
false_boi = []
for s in range(20):
    segs = W.text_only_sample(s, "test").segments
    pred, _ = evaluate.boi_predictions(model, segs)
    o = lvlm.generate(torch.tensor([model.encode_ids(segs[0])]), max_new_tokens=16,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    false_boi.append(any(pred) or tid.boi in o.new_tokens[0].tolist())
rate = float(np.mean(false_boi))
lo, hi = wilson(sum(false_boi), len(false_boi))
print(f"text-only samples where <img> was emitted: {sum(false_boi)} of {len(false_boi)} (false_boi = {rate:.2f}, "
      f"95% interval {lo:.2f}-{hi:.2f})")
print("example:", W.text_only_sample(0, "test").segments[0])

# %%
assert rate <= 0.1                                   # the project's target for false_boi
print(f"text without a trigger phrase made the model start a picture in {sum(false_boi)} of {len(false_boi)} samples"
      + ("" if any(false_boi) else ": never, on these samples"))

# %% [markdown]
# ## 6. `0.0` against `-inf` on whole generations
# Notebook 05 showed on single positions that the published `0.0` is not a real ban. Here
# `probes.compare_blocking` runs greedy generation on 10 prompts (5 text-only samples and 5 story openings)
# under both modes and counts how often a "blocked" token would have won, how often one was chosen and how
# many image tokens ended up outside a block.

# %%
prompts = [W.text_only_sample(s, "test").segments[0] for s in range(5)] + \
          [W.story_sample(s, "test").segments[0] for s in range(5)]
cmp = probes.compare_blocking(model, prompts, max_new_tokens=100)
cols = ["mode", "prompts", "new_tokens", "outside_steps", "would_win", "chose_blocked", "stray_tokens"]
print(" ".join(f"{c:>13}" for c in cols))
for row in cmp.table():
    print(" ".join(f"{row[c]:>13}" for c in cols))
differ = [k for k in range(len(prompts)) if cmp.outputs["faithful"][k] != cmp.outputs["strict"][k]]
print("\nprompts where the two modes wrote different text:", differ)

# %% [markdown]
# Did the two modes write different text (the line above)? The `0.0` changes a greedy choice only where a
# blocked token would win, and the count of such steps is in the table. The other difference between the
# modes is the *budget rule*: a whole block needs 66 tokens, and when fewer remain before `max_new_tokens`
# the strict processor bans `<img>` (a picture that cannot be finished is not started), while the faithful
# one lets the block start (with a warning, silenced in this notebook) and it is cut off (notebook 05,
# claim #8). The cell below shows the first prompt where the texts differ, if any, with the 64 image tokens
# of each block shortened to `[64 tokens]`.

# %%
def compact(text):
    return re.sub(r"(?:\s*<img_\d{5}>)+", lambda m: f" [{m.group(0).count('<img_')} tokens]", text)


for k in differ[:1]:
    print("prompt:  ", prompts[k])
    for mode in G.MODES:
        print(f"{mode:>9}:", textwrap.fill(compact(cmp.outputs[mode][k]), 110, subsequent_indent=" " * 11))
if not differ:
    print(f"the two modes wrote the same text for all {len(prompts)} prompts; a blocked token would have won at "
          f"{cmp.faithful.would_win} of {cmp.faithful.outside_steps} outside steps")

# %%
assert cmp.strict.stray_tokens == 0 and cmp.strict.chose_blocked == 0
assert cmp.faithful.chose_blocked == cmp.faithful.would_win
print(f"faithful: a blocked token would have won at {cmp.faithful.would_win} of {cmp.faithful.outside_steps} "
      "outside steps" + (": the 0.0 held on these prompts because the text scores stayed above it (notebook 05)"
                         if cmp.faithful.would_win == 0 else ", and each time it was chosen")
      + "; the -inf ban holds by construction")

# %% [markdown]
# ## Exercises
# 1. Change one trigger phrase in a story to something close (`here it is .` instead of `here it is :`).
#    How does P(`<img>`) after it change? Which token of the phrase carries the decision?
# 2. In section 4, ask for sampling (`probes.interleave(..., do_sample=True, temperature=1.0)`) with a few
#    seeds. How many pictures do you get on average? Does sampling ever start a picture without a trigger?
# 3. The logit lens in section 2 shows at which layer P(`<img>`) rises. Is it the same layer for both trigger
#    phrases? (Hint: split `lens_after` by the phrase that precedes each position.)
# 4. `evaluate.boi_predictions` applies the published processor. Rerun section 2 with a strict processor:
#    can the precision and recall change? Why (not)?
#
# <details><summary>Answer 1</summary>
#
# Read P(`<img>`) at the end of the phrase, and after each of its tokens, for the real trigger and for near
# misses (a full stop for the colon, two words swapped). The model has only ever seen a picture after the complete phrase, so the decision can only be made
# at its last token; the earlier tokens can at most prepare it. Whether a near miss ("here it is ." — the
# full stop ends a sentence in this world) still opens a picture is what the first cell below measures.
# </details>
#
# <details><summary>Answer 2</summary>
#
# Section 4 already sampled eight runs at temperature 1.0 (the default of `generate`), so the second cell
# reuses them: it prints the mean number of pictures per run and checks, for every picture, whether the text
# written before it ends with a trigger phrase. A picture after anything else would be a picture in the wrong
# place.
# </details>
#
# <details><summary>Answer 3</summary>
#
# Section 2 noted, for every position before a picture, the trigger phrase that ends there. The third cell
# splits `lens_after` by that phrase and prints, per phrase, the mean lens curve and the first layer
# whose mean P(`<img>`) passes one half. The two phrases have different last tokens (`:` after "is" or after
# "this"), so nothing forces the same layer; the printout says whether it is.
# </details>
#
# <details><summary>Answer 4</summary>
#
# The two modes differ in two ways outside a block: the strict one bans with `-inf` instead of `0.0`, and it
# bans `<img>` when a whole block no longer fits before `max_length` (there is none when reading a story).
# `<img>` itself is never touched by the ban. So the greedy choice can only differ at positions where a blocked
# token would win under `0.0`, and only if the strict choice there is `<img>`; precision and recall cannot
# change anywhere else. The last cell rereads the 20 stories with both processors and prints both pairs of
# numbers and the number of positions where the two choices differ.
# </details>

# %%
base_text = "let us draw a big red circle on the left ."
for phrase in ("here it is :", "here it is .", "here is it :", "it looks like this :", "it looks like this ."):
    b = probes.boi_trace(model, f"{base_text} {phrase}")
    n = len(phrase.split())
    steps = ", ".join(f"{w} {p:.3f}" for w, p in zip(b.tokens[-n:], b.p_final[-n:]))
    print(f"{phrase!r:24}: P(<img>) after each token: {steps}")

# %%
pictures_per_run = [len(r.images) for r in runs]
print(f"pictures per sampled run (T = 1.0, {len(runs)} runs): {pictures_per_run}, mean {np.mean(pictures_per_run):.2f}")
untriggered = 0
for r in runs:
    text_so_far = opening
    for seg in r.segments:
        if isinstance(seg, str):
            text_so_far += " " + seg
        elif not W.ends_with_trigger(text_so_far.replace("<img>", " ")):
            untriggered += 1
print(f"pictures whose preceding text does not end with a trigger phrase: {untriggered} of {sum(pictures_per_run)}")

# %%
lens_by_phrase = {p: [lens for lens, q in zip(lens_after, phrase_after) if q == p] for p in W.TRIGGER_PHRASES}
print("positions before a picture whose text ends in no trigger phrase:", phrase_after.count(None))
for p, curves in lens_by_phrase.items():
    mean_curve = np.array(curves).mean(0)
    first = next((bt.layer_names[k] for k, v in enumerate(mean_curve) if v > 0.5), None)
    print(f"{p!r:24} ({len(curves):2d} positions): mean P(<img>) by layer "
          f"{' '.join(f'{v:.2f}' for v in mean_curve)}; first above 0.5: {first}")

# %%
counts_by_mode = {m: [0, 0, 0] for m in G.MODES}               # tp, fp, fn
differ_positions = 0
for s in range(N_STORIES):
    sid = story_ids(W.story_sample(s, "test").segments)
    with torch.no_grad():
        story_logits = lvlm(torch.tensor([sid]))["logits"][0].float()
    for i in free_positions(sid):
        prefix, actual = torch.tensor([sid[: i + 1]]), sid[i + 1] == tid.boi
        choice = {m: int(G.AutoImageTokenGenerationProcessor(token_ids=tid, mode=m)(prefix, story_logits[i: i + 1])
                         .argmax()) for m in G.MODES}
        differ_positions += choice["faithful"] != choice["strict"]
        for m, c in choice.items():
            predicted = c == tid.boi
            counts_by_mode[m][0] += predicted and actual
            counts_by_mode[m][1] += predicted and not actual
            counts_by_mode[m][2] += actual and not predicted
for m, (tp_m, fp_m, fn_m) in counts_by_mode.items():
    print(f"{m:>8}: precision {tp_m / max(tp_m + fp_m, 1):.3f}, recall {tp_m / max(tp_m + fn_m, 1):.3f} "
          f"({tp_m} hits, {fp_m} false, {fn_m} missed)")
print(f"free positions where the two processors choose differently: {differ_positions}")

# %% [markdown]
# ## What you should now know
# 1. Whether the model opens a picture is a next-token decision on `<img>`, readable with probes and the logit lens.
# 2. Interleaved generation alternates text and forced image blocks without any special mode.
# 3. Precision and recall of `<img>` measure that decision on held-out stories.
