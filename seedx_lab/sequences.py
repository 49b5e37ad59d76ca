"""Sequences: pieces -> ids, labels, block masks, and right-padded batches.

One rule for the model, training, evaluation and the notebooks. A sequence is a list of pieces:

- ``("text", str, labelled)``: text; labelled text carries LM labels;
- ``("gen", features [256, D] | None)``: a generated image block ``<img><img_00000>…</img>``; only its
  ``<img>`` is labelled (that is how SEED-X learns to predict BOI); ``features`` is the regression target;
- ``("cmp", features [views, 256, D], positions [views, 2])``: an image to read (comprehension), its
  views as ``<patch>…</patch>`` blocks and a last ``<img>…</img>`` global view; nothing is labelled.
"""
from __future__ import annotations

import torch

from .tokens import ImageTokenIds, find_image_blocks

def caption_pieces(caption: str, feats=None):
    return [("text", caption, True), ("gen", feats)]


def comprehension_pieces(feats, pos, question: str, answer: str | None):
    pieces = [("text", "[INST]", False), ("cmp", feats, pos), ("text", " " + question + " [/INST]", False)]
    return pieces + ([("text", answer, True)] if answer is not None else [])


def story_pieces(segments, feats=None):
    pieces, j = [], 0
    for seg in segments:
        if isinstance(seg, str):
            pieces.append(("text", seg + " ", True))
        else:
            pieces.append(("gen", None if feats is None else feats[j]))
            j += 1
    return pieces


def encode_pieces(model, pieces):
    """Pieces -> (ids, labels, gen_flags, cmp_feats, cmp_pos, gen_feats).

    Labels follow SEED-X: text marked ``labelled`` and ``</s>``, and the ``<img>`` of each generated
    block; image tokens never. ``gen_flags`` has one entry per image block: True (generated, with a
    regression target), False (comprehension) or None (generated block without a target).
    """
    m = model
    ids, labels, flags, cf, cp, gf = [m.tokenizer.bos_token_id], [-100], [], [], [], []
    n_tok = m.lvlm.num_img_tokens
    tid = m.token_ids
    for p in pieces:
        if p[0] == "text":
            t = m.tokenizer.encode(p[1], add_special_tokens=False)
            ids += t
            labels += t if p[2] else [-100] * len(t)
        elif p[0] == "gen":
            ids += [tid.boi, *tid.img[:n_tok], tid.eoi]
            labels += [tid.boi] + [-100] * (n_tok + 1)
            flags.append(None if p[1] is None else True)
            if p[1] is not None:
                gf.append(p[1])
        elif p[0] == "cmp":
            n = p[1].shape[0]
            t = m.tokenizer.encode(m.image_prompt(n), add_special_tokens=False)
            ids += t
            labels += [-100] * len(t)
            flags += [False] * n
            cf.append(p[1])
            cp.append(p[2])
        else:
            raise ValueError(f"unknown piece kind {p[0]!r}")
    ids.append(m.tokenizer.eos_token_id)
    labels.append(m.tokenizer.eos_token_id)
    return ids, labels, flags, cf, cp, gf


def collate(model, examples, device="cpu"):
    """Right-padded batch of encoded examples, as keyword arguments of ``ContinuousLVLM.forward``."""
    pad = model.tokenizer.pad_token_id
    L = max(len(e[0]) for e in examples)
    B = len(examples)
    ids = torch.full((B, L), pad, dtype=torch.long)
    labels = torch.full((B, L), -100, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    cmp = torch.zeros((B, L), dtype=torch.bool)
    gen = torch.zeros((B, L), dtype=torch.bool)
    cf, cp, gf = [], [], []
    for b, (i, l, flags, f1, p1, f2) in enumerate(examples):
        ids[b, :len(i)] = torch.tensor(i)
        labels[b, :len(l)] = torch.tensor(l)
        att[b, :len(i)] = 1
        _mark_blocks(ids[b], model.token_ids, flags, cmp[b], gen[b])
        cf += f1
        cp += p1
        gf += f2
    return dict(input_ids=ids.to(device), attention_mask=att.to(device), labels=labels.to(device),
                image_features=torch.cat(cf).to(device) if cf else None, ids_cmp_mask=cmp.to(device) if cf else None,
                patch_positions=torch.cat(cp).to(device) if cp else None,
                target_features=torch.stack(gf).to(device) if gf else None, ids_gen_mask=gen.to(device) if gf else None)


def make_labels(input_ids: torch.Tensor, token_ids: ImageTokenIds, gen_blocks: list[list[bool]] | None = None,
                pad_id: int | None = None, mask_before: torch.Tensor | None = None) -> torch.Tensor:
    """LM labels ``[B, T]`` for SEED-X training (-100 = no label).

    Every text token is labelled. Inside an image block nothing is labelled (image tokens, closer)
    except the ``<img>`` opener of a block that is *generated* (``gen_blocks[b][k]`` is True for the
    k-th ``<img>``/``<patch>`` block of row b) — that is how the model learns to predict ``<img>``.
    ``mask_before[b]``: positions before it (e.g. a question) get no label.
    """
    labels = input_ids.clone()
    for b in range(input_ids.shape[0]):
        blocks = find_image_blocks(input_ids[b], token_ids)
        flags = gen_blocks[b] if gen_blocks is not None else [False] * len(blocks)
        if len(flags) != len(blocks):
            raise ValueError(f"row {b}: {len(blocks)} image blocks but {len(flags)} gen flags")
        for blk, is_gen in zip(blocks, flags):
            labels[b, blk.start + (1 if is_gen else 0): blk.end] = -100
        if mask_before is not None:
            labels[b, : int(mask_before[b])] = -100
    if pad_id is not None:
        labels[input_ids == pad_id] = -100
    return labels


def block_masks(input_ids: torch.Tensor, token_ids: ImageTokenIds, gen_blocks: list[list[bool]]):
    """Boolean ``ids_cmp_mask`` and ``ids_gen_mask`` ``[B, T]`` at the image-token positions of
    comprehension and generated blocks (flags per block as in :func:`make_labels`)."""
    cmp = torch.zeros_like(input_ids, dtype=torch.bool)
    gen = torch.zeros_like(input_ids, dtype=torch.bool)
    for b in range(input_ids.shape[0]):
        try:
            _mark_blocks(input_ids[b], token_ids, gen_blocks[b], cmp[b], gen[b], complete=True)
        except ValueError as e:
            raise ValueError(f"row {b}: {e}") from None
    return cmp, gen


def _mark_blocks(row_ids, token_ids: ImageTokenIds, flags, cmp_row, gen_row, complete: bool = False) -> None:
    """Set ``gen_row`` (flag True) or ``cmp_row`` (flag False) at each block's image-token positions;
    a None flag (a generated block without a target) marks nothing."""
    blocks = find_image_blocks(row_ids, token_ids)
    if complete and len(blocks) != len(flags):
        raise ValueError(f"{len(blocks)} image blocks but {len(flags)} gen flags")
    for blk, flag in zip(blocks, flags):
        if complete and not blk.complete:
            raise ValueError(f"image block at position {blk.start} is incomplete")
        if flag is not None:
            (gen_row if flag else cmp_row)[blk.token_start: blk.token_start + blk.n_tokens] = True
