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
# # 03 · Special tokens, prompts and labels
#
# **What this notebook teaches.** To a language model, everything is a list of token ids. SEED-X fits
# images into that list with a handful of extra tokens: `<img>` and `</img>` frame an image, `<patch>`
# and `</patch>` frame one any-res tile, and `<img_00000>` ... `<img_00063>` are 64 placeholder slots
# that stand for the image's content. This notebook looks at those tokens and at the sequences built
# from them:
#
# 1. the special tokens and their ids in the seedx-tiny tokenizer;
# 2. how to add them to any other tokenizer (and why adding them twice changes nothing);
# 3. the three prompt shapes: text-to-image `{caption}<img>`, an image of N views for comprehension,
#    and the SEED-X-I instruction template;
# 4. finding image blocks in real sequences, including one that was cut short;
# 5. what the **training labels** look like: which tokens the model is asked to predict (claim 3, part);
# 6. which tokens the generation processor "bans" outside an image block, and which it leaves alone.

# %%
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# %%
import warnings

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

import seedx_lab
from seedx_lab import sequences
from seedx_lab import tokens as T
from seedx_lab import world as W
from seedx_lab.generation import AutoImageTokenGenerationProcessor, blocked_token_ids
from seedx_lab.sequences import caption_pieces, comprehension_pieces, encode_pieces, story_pieces

warnings.filterwarnings("ignore", category=FutureWarning)
torch.manual_seed(0)
plt.rcParams["figure.dpi"] = 72
model = seedx_lab.load("seedx-tiny", device=DEVICE)
tok, ids_of = model.tokenizer, model.token_ids
print("vocabulary size of the tiny tokenizer:", len(tok))

# %% [markdown]
# ## 1. The special tokens
# SEED-X's tokenizer is LLaMA's plus the framing tokens and **100** image tokens `<img_00000>` ...
# `<img_00099>` (plus location and patch tokens we do not need). Only the first 64 image tokens are
# ever used: an image is always exactly 64 tokens long. The tiny tokenizer is a word-level tokenizer
# over the shape world's ~100 words with the same special tokens appended.

# %%
shown = ["<pad>", "<s>", "</s>", "<unk>", T.BOI_TOKEN, T.EOI_TOKEN, T.BOP_TOKEN, T.EOP_TOKEN,
         "<img_00000>", "<img_00001>", "<img_00063>", "<img_00064>", "<img_00099>", "[INST]", "[/INST]"]
vocab = tok.get_vocab()
for s in shown:
    print(f"{s:12s} -> {vocab[s]}")
print("ImageTokenIds: boi", ids_of.boi, "eoi", ids_of.eoi, "bop", ids_of.bop, "eop", ids_of.eop,
      "| image tokens used:", ids_of.num_img_tokens, f"({ids_of.img[0]}..{ids_of.img[-1]})")

# %%
assert all(T.IMG_TOKEN.format(i) in vocab for i in range(T.NUM_IMG_VOCAB))
assert ids_of.num_img_tokens == 64 and list(ids_of.img) == [vocab[T.IMG_TOKEN.format(i)] for i in range(64)]
print("all 100 image tokens are in the vocabulary; 64 of them form an image block")

# %% [markdown]
# The vocabulary as a strip, coloured by kind of token (we will need these colours again in section 6):

# %%
kinds = np.zeros(len(tok), dtype=int)                    # 0 = ordinary text
kinds[[vocab[s] for s in ("<pad>", "<s>", "</s>", "<unk>", "[INST]", "[/INST]")]] = 1
kinds[[ids_of.boi, ids_of.eoi, ids_of.bop, ids_of.eop]] = 2
kinds[list(ids_of.img)] = 3
kinds[[vocab[T.IMG_TOKEN.format(i)] for i in range(64, 100)]] = 4
kind_names = ["text words", "control / template", "<img> </img> <patch> </patch>",
              "<img_00000>..<img_00063>", "<img_00064>..<img_00099>"]
kind_cmap = ListedColormap(["#dddddd", "#888888", "#d62728", "#1f77b4", "#9ecae1"])
fig, ax = plt.subplots(figsize=(9, 1.4))
ax.imshow(kinds[None, :], aspect="auto", cmap=kind_cmap, vmin=0, vmax=4, interpolation="nearest")
ax.set_yticks([])
ax.set_xlabel("token id")
ax.legend(handles=[Patch(color=kind_cmap(k), label=n) for k, n in enumerate(kind_names)],
          ncol=3, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.7))
plt.show()

# %% [markdown]
# ## 2. Adding the tokens to another tokenizer
# SEED-X starts from a tokenizer that knows nothing about images. We imitate that with a small BPE
# tokenizer trained here on 300 of the shape world's captions (nothing downloaded).
# Before the tokens are added, `<img_00005>` is just text and falls apart into many pieces; after
# `tokens.add_special_tokens` it is one token. Calling it again adds nothing: it is idempotent.

# %%
import string

from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

corpus = [W.caption_image_sample(s).caption for s in range(300)]
bpe = Tokenizer(models.BPE(unk_token="<unk>"))
bpe.pre_tokenizer = pre_tokenizers.Metaspace()           # LLaMA-style "▁word" pieces
bpe.train_from_iterator(corpus, trainers.BpeTrainer(
    vocab_size=300, special_tokens=["<unk>"], show_progress=False,
    initial_alphabet=list(string.ascii_lowercase + string.digits + "<>/_")))
other = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>")
text = "a red star<img><img_00005></img>"
print("vocabulary before:", len(other))
print("pieces before:", other.tokenize(text))
added_first = T.add_special_tokens(other)
added_second = T.add_special_tokens(other)
print("added the first time:", added_first, "| the second time:", added_second, "| vocabulary after:", len(other))
print("pieces after: ", other.tokenize(text))

# %%
assert added_first == 4 + T.NUM_IMG_VOCAB and added_second == 0
assert other.tokenize(text)[-3:] == ["<img>", "<img_00005>", "</img>"]
assert T.add_special_tokens(tok) == 0                    # the tiny tokenizer has them already
ids_other = T.ImageTokenIds.from_tokenizer(other)
print("104 tokens added once, none the second time; each special token now encodes as one id "
      f"(in this tokenizer <img> = {ids_other.boi}, <img_00000> = {ids_other.img[0]})")

# %% [markdown]
# ## 3. Three prompt shapes
# **Text to image.** The published text-to-image script writes the caption and then `<img>` itself.
# The model then has to produce the 64 image tokens and `</img>` (the generation processor forces them,
# see notebook 05).

# %%
caption = W.caption_image_sample(1).caption
gen_prompt = T.generation_prompt(caption)
print(repr(gen_prompt))
print(tok.tokenize(gen_prompt))

# %% [markdown]
# **An image for the model to read.** An image cut into `N` views (tiles, then the global view) becomes
# `N` blocks of 64 image tokens: the tiles are framed by `<patch>`...`</patch>`, the global view by
# `<img>`...`</img>`. Later their 64 token embeddings are overwritten with the input resampler's
# output (notebook 02). The printout shortens each run of image tokens.

# %%
def short(text):
    """Write each run of <img_xxxxx> tokens as '<img_00000>…<img_00063>'."""
    import re
    return re.sub(r"(<img_\d{5}>)(?:\s*<img_\d{5}>)*\s*(<img_\d{5}>)", r"\1…\2", text)


for n in (1, 3):
    p = T.comprehension_prompt(n)
    print(f"{n} view(s): {len(tok.tokenize(p))} tokens: {short(p)}")

# %% [markdown]
# **SEED-X-I.** The instruction-tuned model wraps a user turn as `[INST] {instruction} [/INST]\n`, with
# the image tokens at the start of the instruction. `model.comprehension_inputs` builds exactly this
# prompt for a picture and a question and marks where the image embeddings will go (`ids_cmp_mask`).

# %%
sample = W.comprehension_sample(3)
ids, feats, pos, cmp = model.comprehension_inputs(sample.image, sample.question)
print("picture", sample.image.size, "->", feats.shape[0], "views; question:", repr(sample.question))
print(short(" ".join(tok.convert_ids_to_tokens(ids[0].tolist()))))
print("prompt length", ids.shape[1], "| image slots in ids_cmp_mask:", int(cmp.sum()))
assert int(cmp.sum()) == feats.shape[0] * 64
assert tok.convert_ids_to_tokens(ids[0, :2].tolist()) == ["<s>", "[INST]"]
assert tok.convert_ids_to_tokens(ids[0, -1:].tolist()) == ["[/INST]"]    # the word-level tokenizer drops "\n"
print("the prompt is <s> [INST] {views}{question} [/INST]; the template's final newline is whitespace to "
      "the tiny tokenizer (LLaMA's tokenizer would keep it as a token)")

# %% [markdown]
# ## 4. Finding image blocks
# Every later stage locates images with `tokens.find_image_blocks`: a block starts at `<img>` or
# `<patch>`, takes the run of image tokens that follows, and is *complete* when the matching closer comes
# next. We try it on real sequences:
#
# * the comprehension prompt above (three views);
# * the text-to-image prompt, which ends right after `<img>` (a block with 0 tokens, not complete);
# * that prompt after the model generated the full block;
# * the same generation stopped after 30 new tokens: the block is cut in the middle.

# %%
def show_blocks(name, seq):
    blocks = T.find_image_blocks(seq, ids_of)
    print(f"{name} ({len(seq)} tokens):")
    for b in blocks:
        print(f"   {b.kind:5s} start {b.start:3d} end {b.end:3d} image tokens {b.n_tokens:2d} complete {b.complete}")
    return blocks


gen_ids = torch.tensor([model.encode_ids(gen_prompt)])
full = model.lvlm.generate(gen_ids, max_new_tokens=65, pad_token_id=tok.pad_token_id)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    warnings.filterwarnings("ignore", category=FutureWarning)
    cut = model.lvlm.generate(gen_ids, max_new_tokens=30, pad_token_id=tok.pad_token_id, fast_forced_block=False)
blocks_cmp = show_blocks("comprehension prompt", ids[0])
blocks_prompt = show_blocks("text-to-image prompt", gen_ids[0])
blocks_full = show_blocks("prompt + 65 generated tokens", full.sequences[0])
blocks_cut = show_blocks("prompt + 30 generated tokens", cut.sequences[0])
print("warning raised while generating the cut block:", [str(w.message) for w in caught][:1])
print("complete images returned:", len(full.images[0]), "(full)", len(cut.images[0]), "(cut);",
      "cut blocks reported:", len(cut.incomplete_blocks[0]))

# %%
assert [b.kind for b in blocks_cmp] == ["patch", "patch", "img"] and all(b.complete for b in blocks_cmp)
assert len(blocks_prompt) == 1 and blocks_prompt[0].n_tokens == 0 and not blocks_prompt[0].complete
assert blocks_full[0].complete and blocks_full[0].n_tokens == 64 and len(full.images[0]) == 1
assert not blocks_cut[0].complete and blocks_cut[0].n_tokens == 30 and len(cut.images[0]) == 0
print("the finder sees three complete blocks in the comprehension prompt, a complete 64-token block "
      "after generation, and a 30-token block that never closed when generation stopped early")

# %% [markdown]
# ## 5. Labels: what is the model trained to predict?
# A training sequence is assembled from *pieces* (`seedx_lab.sequences`): text, an image to generate, or an
# image to read. `encode_pieces` turns them into ids and labels. A label is the token the model must
# predict at that position; `-100` means "no label, no loss". The published rule:
#
# * text is labelled (except a question the model is answering, and the SEED-X-I markers);
# * of a **generated** image block only the opener `<img>` is labelled; its 64 image tokens and `</img>`
#   are not (the image is learned through the regression loss of notebook 04 instead);
# * a **read** image (comprehension) is not labelled at all.
#
# Here is a caption-to-image training sequence, token by token (image tokens shortened):

# %%
cap = W.caption_image_sample(1)
cap_ids, cap_labels, cap_flags, *_ = encode_pieces(model, caption_pieces(cap.caption, None))
for i, (t_id, lab) in enumerate(zip(cap_ids, cap_labels)):
    if t_id in ids_of.img[1:-1]:
        if t_id == ids_of.img[1]:
            print("       ...   62 more image tokens, all with label -100")
        continue
    print(f"{i:3d}  {tok.convert_ids_to_tokens(t_id):12s} id {t_id:3d}   label {lab}")

# %% [markdown]
# The same rule, checked rather than read, and compared with `sequences.make_labels`, which derives labels
# from the ids and a flag per image block (True = generated). Position 0 (`<s>`) is never a prediction
# target (the loss shifts by one), so the comparison starts at position 1.

# %%
blk = T.find_image_blocks(cap_ids, ids_of)[0]
lab = torch.tensor(cap_labels)
assert lab[blk.start] == ids_of.boi == cap_ids[blk.start]
assert (lab[blk.token_start: blk.end] == -100).all()                  # 64 image tokens and </img>
assert (lab[1: blk.start] == torch.tensor(cap_ids[1: blk.start])).all()   # the caption text
derived = sequences.make_labels(torch.tensor([cap_ids]), ids_of, gen_blocks=[[True]])[0]
assert torch.equal(derived[1:], lab[1:])
print(f"<img> at position {blk.start} carries the label {ids_of.boi} (its own id); all {blk.n_tokens} image "
      "tokens and </img> carry -100: the model is trained to predict <img>, never the image tokens")

# %% [markdown]
# A picture of three training sequences: caption -> image, a comprehension question about a two-tile
# picture, and an interleaved story with two images. Each row is one sequence, each column one
# position; the colour says what the label there is.

# %%
story = next(s for s in (W.story_sample(k) for k in range(100)) if sum(not isinstance(g, str) for g in s.segments) >= 2)
cmp_pieces = comprehension_pieces(feats, pos, sample.question, sample.answer)
encoded = {"caption -> image": encode_pieces(model, caption_pieces(cap.caption, None)),
           "comprehension": encode_pieces(model, cmp_pieces),
           "story": encode_pieces(model, story_pieces(story.segments, None))}


def label_kind(i, l):
    if l == -100:
        return 3 if i in ids_of.img or i in (ids_of.eoi, ids_of.eop, ids_of.bop, ids_of.boi) else 1
    return 2 if i == ids_of.boi else 0


L = max(len(e[0]) for e in encoded.values())
canvas = np.full((len(encoded), L), 4)
for r, (ids_r, labs_r, *_) in enumerate(encoded.values()):
    canvas[r, : len(ids_r)] = [label_kind(i, l) for i, l in zip(ids_r, labs_r)]
lab_cmap = ListedColormap(["#2ca02c", "#cccccc", "#d62728", "#9ecae1", "white"])
fig, ax = plt.subplots(figsize=(10, 2.2))
ax.imshow(canvas, aspect="auto", cmap=lab_cmap, vmin=0, vmax=4, interpolation="nearest")
dots = np.argwhere(canvas == 2)                          # labelled <img>: too thin to see, so add a dot
ax.scatter(dots[:, 1], dots[:, 0], color="#d62728", s=30)
ax.set_yticks(range(len(encoded)))
ax.set_yticklabels(list(encoded))
ax.set_xlabel("position")
ax.legend(handles=[Patch(color=lab_cmap(k), label=n) for k, n in enumerate(
    ["text, labelled", "text, no label", "<img>, labelled", "image block, no label"])],
    ncol=4, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.45))
plt.show()

# %%
for name, (ids_r, labs_r, flags_r, *_) in encoded.items():
    blocks = T.find_image_blocks(ids_r, ids_of)
    labelled_openers = sum(labs_r[b.start] == ids_r[b.start] for b in blocks)
    labelled_image_tokens = sum(labs_r[p] != -100 for b in blocks for p in b.token_positions)
    print(f"{name:17s} blocks {len(blocks)}  generated {flags_r.count(None) + flags_r.count(True)}  "
          f"labelled openers {labelled_openers}  labelled image tokens {labelled_image_tokens}")
    n_gen = sum(f is not False for f in flags_r)
    assert labelled_openers == n_gen and labelled_image_tokens == 0
print("in every kind of sequence: one labelled <img> per generated image, no labelled image token")

# %% [markdown]
# Since `<img>` is a training target, has the trained model learned to put probability on it right after a
# caption? The cell prints P(`<img>`) there, next to a uniform guess. (What that means for "BOI is given in
# the prompt" is notebook 07's subject; here we only look.)

# %%
with torch.no_grad():
    logits = model.lvlm(input_ids=torch.tensor([model.encode_ids(cap.caption)]))["logits"][0, -1]
p_boi = logits.softmax(-1)[ids_of.boi].item()
print(f"after the caption {cap.caption!r}: P(<img>) = {p_boi:.3f} (uniform guess: {1 / len(tok):.3f})")

# %% [markdown]
# ## 6. The published "ban" set
# Outside an image block, SEED-X's `AutoImageTokenGenerationProcessor` stops the model from writing
# image tokens on its own: it sets their scores to `0.0`. Which tokens exactly? We measure it: give the
# processor a row of scores that are all `-5`, and see which columns it changed.

# %%
proc = AutoImageTokenGenerationProcessor(token_ids=ids_of, num_img_gen_tokens=64)
scores = torch.full((1, len(tok)), -5.0)
after = proc(torch.tensor([model.encode_ids("we draw a red star .")]), scores)
touched = (after != scores)[0].nonzero().flatten().tolist()
names = tok.convert_ids_to_tokens(touched)
img_names = [n for n in names if n.startswith("<img_")]
print(f"{len(touched)} tokens set to {after[0, touched[0]].item()}: {img_names[0]} … {img_names[-1]} "
      f"({len(img_names)} image tokens) and {[n for n in names if not n.startswith('<img_')]}")
print("the winner of this row after processing:", tok.convert_ids_to_tokens(int(after.argmax())),
      "(all 65 now tie at 0.0; argmax takes the lowest id)")

# %%
in_vocab_not_blocked = [T.IMG_TOKEN.format(i) for i in range(64, 100)]
assert touched == sorted(blocked_token_ids(ids_of, 64)) == sorted(list(ids_of.img) + [ids_of.eoi])
assert ids_of.boi not in touched and ids_of.bop not in touched and ids_of.eop not in touched
assert all(t in vocab and vocab[t] not in touched for t in in_vocab_not_blocked)
assert int(after.argmax()) in touched        # 0.0 beats -5: the "banned" token wins
print("the 0.0 set is <img_00000>..<img_00063> and </img>; <img>, <patch>, </patch> and the 36 tokens "
      "<img_00064>..<img_00099> (all in the vocabulary) are not touched; with negative scores a 'banned' "
      "token wins")

# %% [markdown]
# The same vocabulary strip as in section 1, now with the processor's treatment outside a block:

# %%
treat = np.zeros(len(tok), dtype=int)
treat[touched] = 1
treat[ids_of.boi] = 2
fig, ax = plt.subplots(figsize=(9, 1.4))
tcmap = ListedColormap(["#dddddd", "#1f77b4", "#d62728"])
ax.imshow(treat[None, :], aspect="auto", cmap=tcmap, vmin=0, vmax=2, interpolation="nearest")
ax.set_yticks([])
ax.set_xlabel("token id")
ax.legend(handles=[Patch(color=tcmap(0), label="left alone"), Patch(color=tcmap(1), label="score set to 0.0"),
                   Patch(color=tcmap(2), label="<img> (left alone)")],
          ncol=3, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.7))
plt.show()

# %% [markdown]
# ## Exercises
# 1. Build the SEED-X-I prompt for the cat photo of notebook 02 (`model.comprehension_inputs`). How many
#    tokens does it have, and how many of them are image slots?
# 2. Make a sequence where a stray `<img_00005>` follows ordinary text and run `find_image_blocks` on it.
#    Then give the same sequence to `proc.states(...)`: what does the published processor think is
#    going on? (Compare with `mode="strict"`.)
# 3. In `encode_pieces`, the answer of a comprehension sample is labelled but the question is not. Find
#    the first labelled position of the comprehension row and decode the tokens from there.
# 4. Repeat section 6 with scores of `+5` instead of `-5`. Which token wins now?
#
# <details><summary>Answer 1</summary>
#
# The prompt is `<s> [INST]`, one block of 64 image slots per view (the tiles in `<patch>` blocks, the global
# view in an `<img>` block), the question and `[/INST]`. So its length is `66 × views` plus the template and the
# question, and the image slots are `64 × views`; how many views the cat gets depends on the grid that
# notebook 01's rules choose for its size. The first cell below prints the three numbers.
# </details>
#
# <details><summary>Answer 2</summary>
#
# `find_image_blocks` starts a block only at `<img>` or `<patch>`, so a stray image token after text belongs to
# no block. The published processor reads only the last token: `<img_00005>` is in its list, so it decides the
# row is inside a block with 6 image tokens written and forces `<img_00006>`. The strict mode reads the block
# structure, finds no `<img>` opening the run, and says the row is outside. The second cell prints the blocks
# and both processors' states.
# </details>
#
# <details><summary>Answer 3</summary>
#
# `comprehension_pieces` marks the question as context (no label) and the answer as text to predict, so the
# first labelled position is the first word of the answer (the `[/INST]` marker before it is not labelled).
# The third cell finds it and decodes from there; compare with `sample.answer`.
# </details>
#
# <details><summary>Answer 4</summary>
#
# The processor writes the same `0.0` whatever the row holds. With every other score at `+5`, `0.0` is now the
# lowest score in the row, so no image token can win; the winner is a token the processor left alone (they all
# tie at `+5`, and `argmax` takes the lowest id). The last cell checks which.
# </details>

# %%
import skimage.data
from PIL import Image

cat = Image.fromarray(skimage.data.chelsea()).resize((135, 90), Image.BICUBIC)
cat_ids, cat_feats, _, cat_cmp = model.comprehension_inputs(cat)
print(f"cat photo: {cat_feats.shape[0]} views, prompt of {cat_ids.shape[1]} tokens, "
      f"{int(cat_cmp.sum())} of them image slots")

# %%
stray = torch.tensor([model.encode_ids("we draw a red star .") + [vocab["<img_00005>"]]])
print("blocks found:", T.find_image_blocks(stray[0], ids_of))
for mode in ("faithful", "strict"):
    st = AutoImageTokenGenerationProcessor(token_ids=ids_of, mode=mode).states(stray)
    forced = tok.convert_ids_to_tokens(int(st.forced_id[0])) if st.forced_id[0] >= 0 else None
    print(f"{mode:8s}: image tokens already written k = {int(st.k[0])}, forced next: {forced}")

# %%
cmp_ids, cmp_labels = encoded["comprehension"][:2]
first = next(i for i, l in enumerate(cmp_labels) if l != -100)
print(f"first labelled position: {first} (token {tok.convert_ids_to_tokens(cmp_ids[first])!r}, "
      f"previous token {tok.convert_ids_to_tokens(cmp_ids[first - 1])!r})")
print("decoded from there:", model.decode(cmp_ids[first:]))
print("the sample's answer:", sample.answer)

# %%
high = torch.full((1, len(tok)), 5.0)
after_high = proc(torch.tensor([model.encode_ids("we draw a red star .")]), high)
winner = int(after_high.argmax())
print("with +5 everywhere the winner is", tok.convert_ids_to_tokens(winner),
      "| it is one the processor set to 0.0:", winner in touched)
# %% [markdown]
# ## What you should now know
# 1. Images enter the text as blocks `<img><img_00000>…<img_00063></img>` (tiles as `<patch>` blocks).
# 2. The prompt templates decide whether the model reads an image (comprehension) or is asked to draw one (`…<img>`).
# 3. The block structure is what the processor and the hidden-state pick later rely on.
