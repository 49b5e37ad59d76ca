"""Forced image-block generation: SEED-X's ``AutoImageTokenGenerationProcessor``, batched.

When the LLM emits ``<img>``, SEED-X does not let it choose the next 65 tokens: a logits
processor writes the block ::

    <img> <img_00000> <img_00001> ... <img_00063> </img>
      ^ chosen by the model    ^ forced, one per step ...   ^ forced

and the last-layer hidden states at the 64 ``<img_xxxxx>`` positions become the image features.

What the published processor does (AILab-CVC/SEED-X, ``src/models/mllm/generation.py``), row by row:

* it builds ``F = [<img>, <img_00000>, ..., <img_{n-1}>, </img>]`` (``n = num_img_gen_tokens``);
* it reads **only the last token** of the row. If that token is in ``F[:-1]`` at index ``p``, the
  row is "in a block" and ``F[p + 1]`` is forced by *assigning* ``score[F[p+1]] = max(row) + 10``
  (an assignment, not ``+=``; the max is taken over the unprocessed row);
* otherwise it assigns ``0.0`` to the scores of ``F[1:]`` = ``<img_00000> ... <img_{n-1}> </img>``.
  ``<img>`` itself is left alone: the model decides when an image starts.

Consequences, reproduced on purpose by ``mode="faithful"``:

* ``0.0`` is not a ban. When every other logit is negative a "blocked" image token wins the argmax
  (:func:`blocked_token_would_win` measures how often).
* ``max + 10`` is not a hard force. Under sampling the forced token's probability is
  ``1 / (1 + sum_j exp(s_j - max - 10))``, which falls short of 1 when many tokens sit near the max.
* The state is read from one token, so any image token at the end of a sequence continues a block,
  whatever opened it: a prompt ending in ``<patch><img_00000><img_00001>`` is continued with
  ``<img_00002> ... </img>`` (closed by ``</img>``, not ``</patch>``), and a stray ``<img_00005>``
  after text forces ``<img_00006>``. For sequences the processor wrote itself this never matters.

``mode="strict"`` is the fixed version: it reads the state from the block structure (the last
``<img>`` and the tokens after it, which must be ``<img_00000> ... <img_{k-1}>`` in order), bans
with ``-inf``, and a forced row gets ``-inf`` everywhere except the forced token, so sampling,
temperature or top-p can never leave a block. The forced token gets ``max + 10`` in both modes.

Both modes work on the whole batch with tensor operations (no loop over rows, no ``.item()``).

The budget rule (``max_length`` set): a whole block needs ``n + 2`` tokens. When fewer remain,
``strict`` bans ``<img>`` in rows outside a block; ``faithful`` changes nothing but warns, once per
call, so a cut-off block is never silent. Both modes warn when a block that is already open cannot
reach ``</img>`` before ``max_length``.
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import NamedTuple

import torch
from transformers import LogitsProcessor

from .tokens import NUM_IMG_TOKENS, ImageTokenIds

__all__ = [
    "MODES",
    "OUTSIDE",
    "INSIDE",
    "CLOSING",
    "STATE_NAMES",
    "BlockState",
    "Decision",
    "AutoImageTokenGenerationProcessor",
    "forced_block_ids",
    "blocked_token_ids",
    "blocked_token_would_win",
    "blocked_token_mass",
]

MODES = ("faithful", "strict")
FORCE_MARGIN = 10.0        # published: forced score = row max + 10

# per-row state codes
OUTSIDE, INSIDE, CLOSING = 0, 1, 2
STATE_NAMES = ("outside", "inside", "closing")


# --------------------------------------------------------------------------- id lists

def _img_ids(token_ids: ImageTokenIds, num_img_gen_tokens: int | None) -> tuple[int, ...]:
    n = len(token_ids.img) if num_img_gen_tokens is None else int(num_img_gen_tokens)
    if n < 1:
        raise ValueError(f"num_img_gen_tokens must be at least 1, got {n}")
    if n > len(token_ids.img):
        raise ValueError(f"num_img_gen_tokens={n} but token_ids holds only {len(token_ids.img)} image tokens")
    return tuple(token_ids.img[:n])


def forced_block_ids(token_ids: ImageTokenIds, num_img_gen_tokens: int | None = None) -> list[int]:
    """``[<img>, <img_00000>, ..., <img_{n-1}>, </img>]`` — the published ``img_ids_list`` (n + 2 ids).

    ``num_img_gen_tokens`` defaults to all image tokens in ``token_ids``.
    """
    return [token_ids.boi, *_img_ids(token_ids, num_img_gen_tokens), token_ids.eoi]


def blocked_token_ids(token_ids: ImageTokenIds, num_img_gen_tokens: int | None = None) -> list[int]:
    """Ids the processor blocks outside a block: ``<img_00000> ... <img_{n-1}> </img>`` (not ``<img>``)."""
    return forced_block_ids(token_ids, num_img_gen_tokens)[1:]


def _check_scores(scores: torch.Tensor, ids: list[int]) -> None:
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a [batch, vocab] tensor, got {shape}")
    if not scores.is_floating_point():
        raise ValueError(f"scores must be floating point, got {scores.dtype}")
    if max(ids) >= scores.shape[-1]:
        raise ValueError(f"token id {max(ids)} is outside the scores' vocabulary of {scores.shape[-1]}")


# --------------------------------------------------------------------------- how weak is 0.0?

def blocked_token_would_win(scores: torch.Tensor, token_ids: ImageTokenIds,
                            num_img_gen_tokens: int | None = None) -> torch.Tensor:
    """BoolTensor[B]: after the published ``0.0`` "blocking", is the row's argmax a blocked token?

    Only ``scores`` matter (every row is treated as outside a block). Ties break as
    ``torch.argmax`` does (first index), like greedy decoding in ``transformers``.
    """
    blocked = blocked_token_ids(token_ids, num_img_gen_tokens)
    _check_scores(scores, blocked)
    cols = torch.tensor(blocked, device=scores.device)
    after = scores.clone()
    after[:, cols] = 0.0                                   # [B, V]
    return torch.isin(after.argmax(dim=-1), cols)          # [B]


def blocked_token_mass(scores: torch.Tensor, token_ids: ImageTokenIds,
                       num_img_gen_tokens: int | None = None) -> torch.Tensor:
    """FloatTensor[B] (float32): softmax probability left on the blocked tokens after ``0.0`` blocking.

    A real ban gives 0 here; the published ``0.0`` gives ``(n+1) / (n+1 + sum exp(others))``.
    """
    blocked = blocked_token_ids(token_ids, num_img_gen_tokens)
    _check_scores(scores, blocked)
    cols = torch.tensor(blocked, device=scores.device)
    after = scores.float().clone()
    after[:, cols] = 0.0
    return after.softmax(dim=-1)[:, cols].sum(dim=-1)


# --------------------------------------------------------------------------- the processor

class BlockState(NamedTuple):
    """Per-row state of a batch, as LongTensors [B].

    ``state``: OUTSIDE / INSIDE / CLOSING. ``k``: image tokens already in the open block
    (0..n-1 inside, n closing, -1 outside). ``forced_id``: the token forced next (-1 outside).
    """

    state: torch.Tensor
    k: torch.Tensor
    forced_id: torch.Tensor


@dataclass(frozen=True)
class Decision:
    """One (call, row) decision recorded when ``record=True``.

    ``overridden_score``: for forced rows the forced token's score before processing; for outside
    rows the largest score among the blocked tokens before they were overwritten.
    ``p_boi``: softmax probability of ``<img>`` in the unprocessed row.
    """

    step: int
    row: int
    state: str
    block_index: int | None
    forced_id: int | None
    overridden_score: float
    p_boi: float

    def as_dict(self) -> dict:
        return asdict(self)


class AutoImageTokenGenerationProcessor(LogitsProcessor):
    """Forces ``<img_00000> … <img_{n-1}> </img>`` after every ``<img>``; see the module docstring.

    Args:
        tokenizer: any tokenizer holding the SEED-X tokens (ignored when ``token_ids`` is given).
        num_img_gen_tokens: image tokens per generated block (64 as published).
        mode: ``"faithful"`` (published arithmetic) or ``"strict"`` (-inf bans, hard forcing,
            state read from the block structure).
        token_ids: the special-token ids; its first ``num_img_gen_tokens`` image tokens are used.
        record: append a :class:`Decision` per (call, row) to ``self.decisions``.
        max_length: total sequence length ``generate`` stops at; enables the budget rule.
        inplace: write into the given scores and return them (as the published processor does)
            instead of returning a new tensor; saves one copy of ``[batch, vocab]`` per call.

    Returns a new scores tensor and leaves the input as it was, unless ``inplace``.
    """

    def __init__(self, tokenizer=None, num_img_gen_tokens: int = NUM_IMG_TOKENS, mode: str = "faithful",
                 token_ids: ImageTokenIds | None = None, record: bool = False,
                 max_length: int | None = None, inplace: bool = False) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(repr(m) for m in MODES)}; got {mode!r}")
        if token_ids is None:
            if tokenizer is None:
                raise ValueError("give a tokenizer with the SEED-X tokens, or token_ids=ImageTokenIds(...)")
            token_ids = ImageTokenIds.from_tokenizer(tokenizer, num_img_gen_tokens)
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive int or None, got {max_length!r}")

        self.mode = mode
        self.token_ids = token_ids
        self.num_img_gen_tokens = int(num_img_gen_tokens)
        self.forced_ids = forced_block_ids(token_ids, num_img_gen_tokens)   # n + 2
        if len(set(self.forced_ids)) != len(self.forced_ids) or min(self.forced_ids) < 0:
            raise ValueError("<img>, </img> and the image tokens must be distinct non-negative ids")
        self.record = record
        self.max_length = max_length
        self.inplace = bool(inplace)
        self.decisions: list[Decision] = []
        self.step = 0                                # calls so far
        self._forced_cpu = torch.tensor(self.forced_ids, dtype=torch.long)
        self._cache: dict = {}

    # ------------------------------------------------------------ helpers
    @property
    def block_length(self) -> int:
        """Tokens in a whole block, ``<img>`` to ``</img>``: n + 2."""
        return self.num_img_gen_tokens + 2

    def reset(self) -> None:
        """Forget recorded decisions and restart the step counter (call between generations)."""
        self.decisions.clear()
        self.step = 0

    def _forced(self, device) -> torch.Tensor:
        key = ("forced", device)
        if key not in self._cache:
            self._cache[key] = self._forced_cpu.to(device)
        return self._cache[key]

    def _blocked_mask(self, vocab: int, device) -> torch.Tensor:
        """BoolTensor[V], True at ``<img_00000> … </img>``."""
        key = ("blocked", vocab, device)
        if key not in self._cache:
            mask = torch.zeros(vocab, dtype=torch.bool, device=device)
            mask[self._forced(device)[1:]] = True
            self._cache[key] = mask
        return self._cache[key]

    # ------------------------------------------------------------ state
    def states(self, input_ids: torch.Tensor) -> BlockState:
        """Each row's :class:`BlockState`, read the way ``self.mode`` reads it."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a [batch, seq] tensor, got {shape}")
        if input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool:
            raise ValueError(f"input_ids must hold integer token ids, got {input_ids.dtype}")
        B, L = input_ids.shape
        dev, n = input_ids.device, self.num_img_gen_tokens
        forced = self._forced(dev)                                   # [n+2]
        if L == 0:
            k = torch.full((B,), -1, dtype=torch.long, device=dev)
        elif self.mode == "faithful":
            k = self._k_from_last_token(input_ids, forced)
        else:
            k = self._k_from_block(input_ids, forced)
        state = torch.where(k < 0, OUTSIDE, torch.where(k < n, INSIDE, CLOSING))
        forced_id = torch.where(k < 0, -1, forced[(k + 1).clamp(min=0)])
        return BlockState(state, k, forced_id)

    @staticmethod
    def _k_from_last_token(input_ids: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
        """Published rule: last token at index p of ``F[:-1]`` -> k = p, else -1.  [B]"""
        hit = input_ids[:, -1:] == forced[None, :-1]                 # [B, n+1]
        p = hit.to(torch.uint8).argmax(dim=-1)                       # first match, like list.index
        return torch.where(hit.any(dim=-1), p, -1)

    def _k_from_block(self, input_ids: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
        """Strict rule: last ``<img>`` followed exactly by ``<img_00000> … <img_{k-1}>``, k <= n.  [B]"""
        n = self.num_img_gen_tokens
        W = min(input_ids.shape[1], n + 1)                           # an open block fits in n+1 tokens
        tail = input_ids[:, -W:]                                     # [B, W]
        pos = torch.arange(W, device=input_ids.device)               # [W]
        last_boi = torch.where(tail == forced[0], pos, -1).amax(dim=-1)   # [B], -1: no <img> in tail
        offset = pos[None, :] - last_boi[:, None] - 1                # [B, W] index into the body
        expected = forced[1:-1][offset.clamp(0, n - 1)]              # [B, W] <img_offset>
        ok = (offset < 0) | (tail == expected)                       # positions after <img> must match
        valid = (last_boi >= 0) & ok.all(dim=-1)
        return torch.where(valid, W - 1 - last_boi, -1)

    # ------------------------------------------------------------ the call
    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        _check_scores(scores, self.forced_ids)
        if input_ids.shape[0] != scores.shape[0]:
            raise ValueError(f"input_ids has {input_ids.shape[0]} rows but scores has {scores.shape[0]}")
        input_ids = input_ids.to(scores.device)
        st = self.states(input_ids)
        strict = self.mode == "strict"
        forced_row = st.state != OUTSIDE                             # [B]
        outside = ~forced_row
        if self.record:                                              # reads the unprocessed scores
            self._record(scores, st, self._blocked_mask(scores.shape[1], scores.device))
        # Only the [B, n+1] blocked columns and one column per row are written; the one pass over
        # the whole [B, V] tensor is the row max (and the copy, unless inplace).
        row_max = scores.amax(dim=-1, keepdim=True)                  # [B, 1] of the unprocessed rows
        out = scores if self.inplace else scores.clone()

        # outside: blocked tokens -> 0.0 (faithful) or -inf (strict)
        ban = float("-inf") if strict else 0.0
        cols = self._forced(scores.device)[1:]                       # [n+1] <img_00000> ... </img>
        out[:, cols] = out[:, cols].masked_fill(outside[:, None], ban)

        # budget: a block that starts now must fit before max_length
        remaining = None if self.max_length is None else self.max_length - input_ids.shape[1]
        short = remaining is not None and remaining < self.block_length
        if short and strict:
            out[:, self.token_ids.boi] = out[:, self.token_ids.boi].masked_fill(outside, float("-inf"))

        # forced rows: forced token <- max(unprocessed row) + 10; strict: everything else -inf
        if strict:
            out.masked_fill_(forced_row[:, None], float("-inf"))
        col = st.forced_id.clamp(min=0)[:, None]                     # [B, 1] (outside rows: any column)
        value = torch.where(forced_row[:, None], row_max + FORCE_MARGIN, out.gather(1, col))
        out.scatter_(1, col, value)

        if remaining is not None:
            self._warn_budget(st, remaining, short, outside, out)
        self.step += 1
        return out

    def _warn_budget(self, st: BlockState, remaining: int, short: bool, outside: torch.Tensor,
                     out: torch.Tensor) -> None:
        """Warn when a block would be cut: faithful mode and a row outside a block whose top score is <img>."""
        msgs = []
        if short and self.mode == "faithful" and bool((outside & (out.argmax(dim=-1) == self.token_ids.boi)).any()):
            msgs.append(f"only {remaining} token(s) left before max_length={self.max_length}, fewer than the "
                        f"{self.block_length} a whole <img> block needs; faithful mode still lets <img> start, "
                        "so an image block may be cut off (mode='strict' bans <img> here)")
        need = torch.where(st.state == OUTSIDE, 0, self.num_img_gen_tokens - st.k + 1)   # [B]
        if bool((need > remaining).any()):
            msgs.append(f"an open image block needs up to {int(need.max())} more token(s) but only {remaining} "
                        f"remain before max_length={self.max_length}: it will be cut off before </img>")
        if msgs:
            warnings.warn("; ".join(msgs), UserWarning, stacklevel=3)

    def record_forced(self, input_ids: torch.Tensor, scores: torch.Tensor, row: int, first_step: int) -> None:
        """Record the decisions for forced tokens that ``generate`` fed in one pass (its fast path)
        without calling the processor: ``input_ids`` ``[P, L]`` holds, per forced token, the end of the
        sequence before it (left-padded with -1; the last ``n + 1`` tokens suffice), ``scores`` ``[P, V]``
        the logits that predicted it. Decisions get ``row`` and the steps ``first_step … first_step+P-1``
        (the index of each token among the row's new tokens), so a single-row run records exactly what
        the step-by-step path records. Scores are not changed; does nothing unless ``record``."""
        if not self.record or scores.shape[0] == 0:
            return
        st = self.states(input_ids.to(scores.device))
        self._record(scores, st, self._blocked_mask(scores.shape[1], scores.device),
                     rows=[row] * scores.shape[0], steps=range(first_step, first_step + scores.shape[0]))
        self.step = max(self.step, first_step + scores.shape[0])

    def _record(self, scores: torch.Tensor, st: BlockState, blocked: torch.Tensor, rows=None, steps=None) -> None:
        forced_row = st.state != OUTSIDE
        s = scores.float()
        p_boi = s.softmax(dim=-1)[:, self.token_ids.boi]                              # [B]
        forced_score = s.gather(1, st.forced_id.clamp(min=0)[:, None])[:, 0]          # [B]
        blocked_max = s[:, blocked].amax(dim=-1)                                      # [B]
        over = torch.where(forced_row, forced_score, blocked_max)
        table = torch.stack([st.state.double(), st.k.double(), st.forced_id.double(),
                             over.double(), p_boi.double()], dim=1).tolist()          # one sync per call
        rows = range(len(table)) if rows is None else rows
        steps = [self.step] * len(table) if steps is None else steps
        for row, step, (state, k, fid, o, p) in zip(rows, steps, table):
            forced = state != OUTSIDE
            self.decisions.append(Decision(
                step=step, row=row, state=STATE_NAMES[int(state)],
                block_index=int(k) if forced else None, forced_id=int(fid) if forced else None,
                overridden_score=o, p_boi=p))
