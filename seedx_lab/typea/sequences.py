"""Type-A sequences: pieces -> ids and labels, the same pieces as :mod:`seedx_lab.sequences` with codes.

- ``("text", str, labelled)``: text; labelled text carries LM labels;
- ``("gen", codes [grid, grid])``: an image the model writes, ``<img> code tokens </img>``; everything in
  it is labelled (Chameleon learns to predict ``<img>``, every code and ``</img>``, unlike SEED-X whose
  block tokens are fixed queries and whose ``<img>`` alone carries a label);
- ``("cmp", codes [grid, grid])``: an image the model reads, the same block unlabelled.

A sequence starts with ``<s>`` (no label) and ends with ``</s>`` (labelled).
"""
from __future__ import annotations

import torch


def caption_pieces(caption: str, codes):
    return [("text", caption, True), ("gen", codes)]


def comprehension_pieces(codes, question: str, answer: str | None):
    pieces = [("text", "[INST]", False), ("cmp", codes), ("text", " " + question + " [/INST]", False)]
    return pieces + ([("text", answer, True)] if answer is not None else [])


def story_pieces(segments, codes=None):
    """World story segments (text or scenes) -> pieces; ``codes[j]`` are the j-th picture's codes
    (None: the picture's block carries placeholder code 0, for callers that only read the text positions)."""
    pieces, j = [], 0
    for seg in segments:
        if isinstance(seg, str):
            pieces.append(("text", seg + " ", True))
        else:
            pieces.append(("gen", None if codes is None else codes[j]))
            j += 1
    return pieces


def encode_pieces(model, pieces) -> tuple[list[int], list[int]]:
    """Pieces -> ``(ids, labels)`` for a :class:`~seedx_lab.typea.model.ChameleonTiny`."""
    tok, tid = model.tokenizer, model.token_ids
    ids, labels = [tok.bos_token_id], [-100]
    for p in pieces:
        if p[0] == "text":
            t = tok.encode(p[1], add_special_tokens=False)
            ids += t
            labels += t if p[2] else [-100] * len(t)
        elif p[0] in ("gen", "cmp"):
            codes = p[1] if p[1] is not None else torch.zeros(model.config.vq.grid, model.config.vq.grid, dtype=torch.long)
            block = [tid.boi, *model.codes_to_ids(codes[None])[0].tolist(), tid.eoi]
            ids += block
            labels += block if p[0] == "gen" else [-100] * len(block)
        else:
            raise ValueError(f"unknown piece kind {p[0]!r} (allowed: 'text', 'gen', 'cmp')")
    ids.append(tok.eos_token_id)
    labels.append(tok.eos_token_id)
    return ids, labels


def collate(model, examples, device="cpu") -> dict:
    """Right-padded batch of ``(ids, labels)``: ``input_ids``, ``attention_mask``, ``labels``, each ``[B, L]``."""
    pad = model.tokenizer.pad_token_id
    L = max(len(i) for i, _ in examples)
    B = len(examples)
    ids = torch.full((B, L), pad, dtype=torch.long)
    labels = torch.full((B, L), -100, dtype=torch.long)
    att = torch.zeros((B, L), dtype=torch.long)
    for b, (i, l) in enumerate(examples):
        ids[b, :len(i)] = torch.tensor(i)
        labels[b, :len(l)] = torch.tensor(l)
        att[b, :len(i)] = 1
    return dict(input_ids=ids.to(device), attention_mask=att.to(device), labels=labels.to(device))
