"""The Type-A decoding state machine: a ``LogitsProcessor`` that switches between text and image codes.

Chameleon predicts ``<img>`` like any other token; from then on the image must be exactly ``N`` codebook
tokens and then ``</img>``. :class:`CodebookBlockProcessor` enforces that on a whole batch at once:

* outside an image block, codebook tokens and ``</img>`` are banned (``-inf``); ``<img>`` is free (the
  model decides when a picture starts) unless the budget rule below forbids it;
* after ``<img>`` and ``k < N`` codes, only codebook tokens are allowed (the model still chooses *which*
  code, greedily or by sampling — the caller decides; this processor only masks);
* after ``<img>`` and ``N`` codes, ``</img>`` is the only allowed token.

The state of a row is read from its ids: the last ``<img>`` that is not followed by ``</img>`` opens a
block, and the number of tokens after it counts the codes already written. So a prompt cut in the middle
of a block (``<img>`` and some codes) is continued to exactly ``N`` codes. Unlike the published SEED-X
processor (which assigns ``0.0``, see :mod:`seedx_lab.generation`), bans here are ``-inf``: a banned token
can never win, whatever the other logits are.

Tokens in ``banned_ids`` are never allowed. Budget rule: given ``max_length`` (the longest a row may become, prompt included), ``<img>`` is banned
where fewer than ``N + 2`` positions remain, so no block is ever cut off.
"""
from __future__ import annotations

from typing import Sequence

import torch
from transformers import LogitsProcessor

OUTSIDE, INSIDE, CLOSING = 0, 1, 2


class CodebookBlockProcessor(LogitsProcessor):
    """``boi`` / ``eoi``: ids of ``<img>`` / ``</img>``; ``code_ids``: the codebook tokens' ids (code i is
    ``code_ids[i]``); ``num_codes``: N, codes per image; ``vocab_size``: width of the scores it will get;
    ``banned_ids``: tokens never allowed (e.g. SEED-X's ``<patch>``/``</patch>``, which Type A does not use)."""

    def __init__(self, boi: int, eoi: int, code_ids: Sequence[int], num_codes: int, vocab_size: int,
                 max_length: int | None = None, banned_ids: Sequence[int] = ()):
        code_ids = [int(i) for i in code_ids]
        if isinstance(num_codes, bool) or not isinstance(num_codes, int) or num_codes < 1:
            raise ValueError(f"num_codes must be a positive int, got {num_codes!r}")
        if not code_ids:
            raise ValueError("code_ids is empty: the codebook needs at least one token")
        ids = code_ids + [int(boi), int(eoi)]
        if len(set(ids)) != len(ids):
            raise ValueError("boi, eoi and the code ids must all be different token ids")
        if min(ids) < 0 or max(ids) >= vocab_size:
            raise ValueError(f"token ids must lie in [0, vocab_size={vocab_size}), got range [{min(ids)}, {max(ids)}]")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")
        self.boi, self.eoi, self.num_codes, self.vocab_size, self.max_length = int(boi), int(eoi), num_codes, vocab_size, max_length
        self.code_mask = torch.zeros(vocab_size, dtype=torch.bool)
        self.code_mask[code_ids] = True
        banned_ids = [int(i) for i in banned_ids]
        if set(banned_ids) & set(ids) or any(not 0 <= i < vocab_size for i in banned_ids):
            raise ValueError(f"banned_ids must be other tokens than boi, eoi and the codes, in [0, {vocab_size})")
        self.always_banned = torch.zeros(vocab_size, dtype=torch.bool)
        self.always_banned[banned_ids] = True

    def state(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row state ``[B]`` (OUTSIDE / INSIDE / CLOSING) and codes written in the open block ``[B]``."""
        B, T = input_ids.shape
        pos = torch.arange(T, device=input_ids.device).expand(B, T)
        last_boi = torch.where(input_ids == self.boi, pos, -1).max(-1).values          # [B]; -1: none
        last_eoi = torch.where(input_ids == self.eoi, pos, -1).max(-1).values
        open_ = last_boi > last_eoi
        written = torch.where(open_, T - 1 - last_boi, 0)
        state = torch.where(open_, torch.where(written >= self.num_codes, CLOSING, INSIDE), OUTSIDE)
        return state, written

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """``input_ids [B, T]``, ``scores [B, V]`` -> processed scores ``[B, V]`` (a new tensor)."""
        if input_ids.dim() != 2 or scores.dim() != 2 or input_ids.shape[0] != scores.shape[0]:
            raise ValueError(f"input_ids must be [B, T] and scores [B, V] with the same B, got "
                             f"{tuple(input_ids.shape)} and {tuple(scores.shape)}")
        if scores.shape[1] != self.vocab_size:
            raise ValueError(f"scores have {scores.shape[1]} columns but the processor was built for "
                             f"vocab_size={self.vocab_size}")
        state, _ = self.state(input_ids)
        codes = self.code_mask.to(scores.device)[None]                                   # [1, V]
        vocab = torch.arange(scores.shape[1], device=scores.device)[None]
        eoi = vocab == self.eoi
        boi = vocab == self.boi
        st = state[:, None]
        banned = torch.where(st == OUTSIDE, codes | eoi, torch.where(st == INSIDE, ~codes, ~eoi))   # [B, V]
        banned = banned | self.always_banned.to(scores.device)[None]
        if self.max_length is not None and input_ids.shape[1] + self.num_codes + 2 > self.max_length:
            banned = banned | (boi & (st == OUTSIDE))
        out = scores.masked_fill(banned, float("-inf"))
        # a forced </img> gets a finite score even if the model gave it -inf, so sampling stays defined
        closing = (state == CLOSING)[:, None] & eoi
        return torch.where(closing, torch.zeros_like(out), out)
