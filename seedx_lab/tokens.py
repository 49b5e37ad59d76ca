"""SEED-X special tokens, tokenizer extension, prompt builders and the image-block finder.

An image inside an LLM sequence is a *block*::

    <img><img_00000><img_00001>...<img_00063></img>        global view / generated image
    <patch><img_00000>...<img_00063></patch>               one any-res tile (comprehension only)

Every later stage locates blocks with :func:`find_image_blocks`.

The seedx-tiny tokenizer is word level: it is built offline from the synthetic world's
vocabulary with the ``tokenizers`` library and wrapped as a ``PreTrainedTokenizerFast``.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

BOI_TOKEN = "<img>"
EOI_TOKEN = "</img>"
IMG_TOKEN = "<img_{:05d}>"
BOP_TOKEN = "<patch>"
EOP_TOKEN = "</patch>"

NUM_IMG_TOKENS = 64        # image tokens per block (input and output, as published)
NUM_IMG_VOCAB = 100        # <img_00000> ... <img_00099> are in the published vocabulary

# SEED-X-I (the instruction-tuned model) wraps every user turn like this.
INSTRUCTION_TEMPLATE = "[INST] {instruction} [/INST]\n"
INSTRUCTION_MARKERS = ("[INST]", "[/INST]")

BOS, EOS, PAD, UNK = "<s>", "</s>", "<pad>", "<unk>"


def special_tokens(num_img_tokens: int = NUM_IMG_VOCAB) -> list[str]:
    """The strings SEED-X adds to its tokenizer: framing tokens then ``<img_00000>…``."""
    return [BOI_TOKEN, EOI_TOKEN, BOP_TOKEN, EOP_TOKEN] + [IMG_TOKEN.format(i) for i in range(num_img_tokens)]


def add_special_tokens(tokenizer, num_img_tokens: int = NUM_IMG_VOCAB) -> int:
    """Add the SEED-X tokens to any ``transformers`` tokenizer; return how many were new.

    Tokens are added un-normalised so they are matched verbatim and never split.
    Calling it twice adds nothing the second time.
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    new = [t for t in special_tokens(num_img_tokens) if t not in vocab]
    if not new:
        return 0
    return tokenizer.add_tokens([AddedToken(t, normalized=False, single_word=False) for t in new])


@dataclass(frozen=True)
class ImageTokenIds:
    """Token ids of the framing tokens and of ``<img_00000>…<img_{n-1}>`` (``img``)."""

    boi: int
    eoi: int
    bop: int
    eop: int
    img: tuple[int, ...]

    @classmethod
    def from_tokenizer(cls, tokenizer, num_img_tokens: int = NUM_IMG_TOKENS) -> "ImageTokenIds":
        vocab = tokenizer.get_vocab()
        needed = [BOI_TOKEN, EOI_TOKEN, BOP_TOKEN, EOP_TOKEN] + [IMG_TOKEN.format(i) for i in range(num_img_tokens)]
        missing = [t for t in needed if t not in vocab]
        if missing:
            shown = ", ".join(missing[:5]) + (" …" if len(missing) > 5 else "")
            raise ValueError(
                f"tokenizer lacks {len(missing)} SEED-X special token(s) ({shown}); "
                "call seedx_lab.tokens.add_special_tokens(tokenizer) first"
            )
        return cls(vocab[BOI_TOKEN], vocab[EOI_TOKEN], vocab[BOP_TOKEN], vocab[EOP_TOKEN],
                   tuple(vocab[IMG_TOKEN.format(i)] for i in range(num_img_tokens)))

    @property
    def num_img_tokens(self) -> int:
        return len(self.img)

    def generation_block(self) -> list[int]:
        """The ids a forced generation appends after ``<img>``: 64 image tokens then ``</img>``."""
        return list(self.img) + [self.eoi]


# --------------------------------------------------------------------------- prompts

def image_block(num_tokens: int = NUM_IMG_TOKENS, kind: str = "img") -> str:
    """``<img><img_00000>…</img>`` (kind="img") or the ``<patch>…</patch>`` form of a tile."""
    if kind not in ("img", "patch"):
        raise ValueError(f"kind must be 'img' or 'patch', got {kind!r}")
    if num_tokens < 1:
        raise ValueError(f"an image block needs at least one image token, got num_tokens={num_tokens}")
    body = "".join(IMG_TOKEN.format(i) for i in range(num_tokens))
    return (BOI_TOKEN + body + EOI_TOKEN) if kind == "img" else (BOP_TOKEN + body + EOP_TOKEN)


def generation_prompt(caption: str) -> str:
    """Text-to-image prompt as published: the caption followed by ``<img>``."""
    return f"{caption}{BOI_TOKEN}"


def comprehension_prompt(n_tiles: int, num_tokens: int = NUM_IMG_TOKENS) -> str:
    """Image tokens for an any-res image of ``n_tiles`` views (tiles then the global view).

    The first ``n_tiles - 1`` views are ``<patch>`` blocks; the last (global) one is an ``<img>`` block.
    """
    if n_tiles < 1:
        raise ValueError(f"an image has at least one view (the global one), got n_tiles={n_tiles}")
    return image_block(num_tokens, "patch") * (n_tiles - 1) + image_block(num_tokens, "img")


def instruction_prompt(instruction: str, image_tokens: str = "") -> str:
    """SEED-X-I template: ``[INST] {image tokens}{instruction} [/INST]\\n``."""
    return INSTRUCTION_TEMPLATE.format(instruction=image_tokens + instruction)


#: the text of an image token, ``<img_00012>`` (group 1: its index). Any number of digits, so that typed
#: text with a malformed one (``<img_12>``) is caught too; the vocabulary spells them ``IMG_TOKEN``.
IMG_TOKEN_RE = re.compile(r"<img_(\d+)>")
_SPECIAL_TEXT = re.compile(rf"</?img>|</?patch>|{IMG_TOKEN_RE.pattern}")


def image_token_index(token: str) -> int | None:
    """``"<img_00012>"`` -> 12; None for any string that is not exactly one image token."""
    m = IMG_TOKEN_RE.fullmatch(token)
    return int(m.group(1)) if m else None



def special_token_text(text: str, extra: Iterable[str] = ()) -> list[str]:
    """The SEED-X special-token strings typed inside ``text`` (``<img>``, ``</img>``, ``<patch>``,
    ``</patch>``, ``<img_00012>`` — any number of digits), plus any of the literal strings in
    ``extra`` (e.g. ``"</s>"``), each once, in order of first appearance.

    The prompt builders use it to refuse user text that would become a (broken) image block.
    """
    found = [(m.start(), m.group()) for m in _SPECIAL_TEXT.finditer(text)]
    for e in extra:
        if e and e in text:
            found.append((text.index(e), e))
    out: list[str] = []
    for _, t in sorted(found):
        if t not in out:
            out.append(t)
    return out


# --------------------------------------------------------------------------- block finder

@dataclass(frozen=True)
class ImageBlock:
    """One image block in a sequence.

    ``start`` is the index of the opener (``<img>``/``<patch>``), ``end`` one past the closer
    (so ``ids[start:end]`` is the block); ``token_start`` the index of the first image token and
    ``n_tokens`` how many image tokens follow it. ``complete`` is False for a block cut short
    (sequence ended, or something other than the closer followed) — then ``end`` is where it stopped.
    """

    start: int
    end: int
    kind: str          # "img" or "patch"
    complete: bool
    n_tokens: int

    @property
    def token_start(self) -> int:
        return self.start + 1

    @property
    def token_positions(self) -> range:
        return range(self.start + 1, self.start + 1 + self.n_tokens)


def find_image_blocks(ids: Sequence[int], token_ids: ImageTokenIds, expected_tokens: int | None = None) -> list[ImageBlock]:
    """All image blocks of a 1-D id sequence, in order.

    A block opens at ``<img>`` or ``<patch>``, takes the run of image tokens that follows and is
    complete when the matching closer comes next (and, if ``expected_tokens`` is given, the run had
    exactly that many tokens). Image tokens and closers outside any block are ignored here.
    """
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        raise ValueError("find_image_blocks takes one sequence of ids, not a batch; loop over rows")
    img = set(token_ids.img)
    closer = {token_ids.boi: token_ids.eoi, token_ids.bop: token_ids.eop}
    blocks: list[ImageBlock] = []
    i, n = 0, len(ids)
    while i < n:
        t = ids[i]
        if t not in closer:
            i += 1
            continue
        j = i + 1
        while j < n and ids[j] in img:
            j += 1
        n_tok = j - i - 1
        complete = j < n and ids[j] == closer[t] and (expected_tokens is None or n_tok == expected_tokens)
        end = j + 1 if (j < n and ids[j] == closer[t]) else j
        blocks.append(ImageBlock(i, end, "img" if t == token_ids.boi else "patch", complete, n_tok))
        i = end
    return blocks


# --------------------------------------------------------------------------- offline tokenizer

def build_tokenizer(words: Iterable[str], num_img_tokens: int = NUM_IMG_VOCAB):
    """A word-level ``PreTrainedTokenizerFast`` over ``words`` plus the SEED-X tokens.

    Text is lower-cased, split on whitespace and punctuation; unknown words map to ``<unk>``.
    Ids: 0 ``<pad>``, 1 ``<s>``, 2 ``</s>``, 3 ``<unk>``, then the words, then the image tokens,
    then the instruction markers ``[INST]`` and ``[/INST]``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab: dict[str, int] = {}
    for w in [PAD, BOS, EOS, UNK, *words]:
        if not w or any(c.isspace() for c in w):
            raise ValueError(f"vocabulary entries must be non-empty single words, got {w!r}")
        vocab.setdefault(w, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS,
                                  pad_token=PAD, unk_token=UNK, clean_up_tokenization_spaces=False)
    add_special_tokens(tok, num_img_tokens)
    from tokenizers import AddedToken
    # the SEED-X-I instruction markers, kept whole
    tok.add_tokens([AddedToken(t, normalized=False) for t in INSTRUCTION_MARKERS if t not in tok.get_vocab()])
    return tok


def read_vocab(path: str | os.PathLike) -> list[str]:
    """Words of a vocabulary file: one per line, blank lines and ``#`` comments skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file not found: {path}")
    lines = (ln.strip() for ln in path.read_text(encoding="utf-8").splitlines())
    return [ln for ln in lines if ln and not ln.startswith("#")]


def save_tokenizer(tokenizer, directory: str | os.PathLike) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    return directory


def load_tokenizer(directory: str | os.PathLike, num_img_tokens: int = NUM_IMG_TOKENS):
    """Load a tokenizer saved by :func:`save_tokenizer` (offline) and check its SEED-X tokens
    (``<img_00000>…`` up to ``num_img_tokens``; a Type-A tokenizer may hold fewer or more codes)."""
    from transformers import PreTrainedTokenizerFast

    from .validate import no_code_folder

    directory = Path(directory)
    if not (directory / "tokenizer.json").is_file():
        raise FileNotFoundError(f"no tokenizer.json in {directory}")
    no_code_folder(directory)                   # never run (or be asked to run) code shipped in the folder
    try:
        tok = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True, trust_remote_code=False)
    except (json.JSONDecodeError, Exception) as e:  # a corrupt file surfaces from deep inside tokenizers
        raise ValueError(f"could not read the tokenizer in {directory}: {e}") from e
    try:
        ImageTokenIds.from_tokenizer(tok, num_img_tokens)
    except ValueError as e:
        raise ValueError(f"{directory / 'tokenizer.json'}: {e}") from None
    return tok

