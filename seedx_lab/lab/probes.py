"""BOI analysis: when does the model want to start an image, and what does the processor do about it?

* :func:`boi_trace` — P(``<img>``) at every position of a sequence, from the final layer and through a
  logit lens on every layer (final norm + ``lm_head`` applied to each layer's residual stream).
* :func:`compare_blocking` — greedy generation under the published ``0.0`` "blocking" and under
  ``-inf`` (``mode="strict"``), counting how often a "blocked" image token would win, was chosen, and
  ended up outside any image block.
* :func:`interleave` — interleaved text and images where every image starts at the model's own
  ``<img>`` prediction, with where and how confidently each ``<img>`` was predicted.

Convention: the probability at position ``i`` is the model's prediction for the token at ``i + 1``
(read from the hidden state at ``i``), so it lines up with ``tokens[i]`` as "after this token".
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from ..generation import (OUTSIDE, AutoImageTokenGenerationProcessor, blocked_token_ids,
                         blocked_token_would_win)
from ..tokens import BOI_TOKEN, find_image_blocks
from .trace import trace

__all__ = ["BoiTrace", "boi_trace", "BlockingStats", "BlockingComparison", "compare_blocking",
           "InterleaveTrace", "interleave"]

from ..tokens import IMG_TOKEN_RE as _IMG_NAME  # the one image-token pattern


def _as_ids(model, prompt_or_ids) -> torch.Tensor:
    """A prompt string (BOS added) or ids (list, 1-D or [1, T] tensor) -> LongTensor [1, T] on the model's device."""
    if isinstance(prompt_or_ids, str):
        ids = model.encode_ids(prompt_or_ids)
    elif torch.is_tensor(prompt_or_ids):
        if prompt_or_ids.dim() == 2 and prompt_or_ids.shape[0] != 1:
            raise ValueError(f"one sequence at a time: got a batch of {prompt_or_ids.shape[0]}")
        ids = prompt_or_ids.reshape(-1).tolist()
    else:
        ids = [int(i) for i in prompt_or_ids]
    if not ids:
        raise ValueError("the prompt is empty")
    return torch.tensor([ids], dtype=torch.long, device=model.device)


# --------------------------------------------------------------------------- BOI logit lens

@dataclass
class BoiTrace:
    """P(``<img>``) along one sequence.

    ``ids``/``tokens``: the sequence ``[P]``; ``prompt_length``: how many of them were given.
    ``p_final [P]``: softmax of the model's logits at each position, P(next token is ``<img>``).
    ``p_lens [layers + 1, P]``: the same read through the logit lens; row 0 is the input embeddings,
    row ``i`` the output of decoder layer ``i - 1``; the last row equals ``p_final``.
    """

    ids: list[int]
    tokens: list[str]
    prompt_length: int
    p_final: np.ndarray
    p_lens: np.ndarray
    layer_names: list[str] = field(default_factory=list)

    def plot(self, max_labels: int = 80):
        """Heat map of ``p_lens`` (layers x positions) over a line of ``p_final``; returns the Figure."""
        from matplotlib.figure import Figure

        P = len(self.tokens)
        fig = Figure(figsize=(max(6.0, min(0.16 * P + 2, 18.0)), 5.5), layout="constrained")
        ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1.4])
        im = ax1.imshow(self.p_lens, aspect="auto", cmap="magma", vmin=0.0, vmax=max(float(self.p_lens.max()), 1e-6),
                        interpolation="nearest")
        ax1.set_yticks(range(len(self.layer_names)), self.layer_names, fontsize=7)
        ax1.set_title("logit lens: P(<img> next) read from each layer")
        fig.colorbar(im, ax=ax1, fraction=0.025)
        x = np.arange(P)
        ax2.plot(x, self.p_final, color="tab:red", lw=1.2, label="final layer")
        nxt = [i for i in range(P - 1) if self.tokens[i + 1] == BOI_TOKEN]
        if nxt:
            ax2.scatter(nxt, self.p_final[nxt], color="black", zorder=3, s=14, label="<img> follows")
        ax2.set_ylim(0, 1.02)
        ax2.set_ylabel("P(<img>)")
        ax2.legend(fontsize=7, loc="upper left")
        for ax in (ax1, ax2):
            if 0 < self.prompt_length < P:
                ax.axvline(self.prompt_length - 0.5, color="tab:cyan", lw=1, ls="--")
        step = max(1, -(-P // max_labels))
        ax2.set_xticks(x[::step], [self.tokens[i] for i in x[::step]], rotation=90, fontsize=6)
        return fig


@torch.no_grad()
def boi_trace(model, prompt_or_ids, generate: bool = False, max_new_tokens: int = 80,
              processor_mode: str = "faithful", **generate_kwargs) -> BoiTrace:
    """P(``<img>``) at every position of ``prompt_or_ids`` (or of prompt + generated tokens when
    ``generate=True``: greedy ``model.lvlm.generate`` with ``max_new_tokens``), final layer and lens.

    The hidden states come from one :func:`seedx_lab.trace` of the forward pass(es), so with
    ``generate=True`` they are the KV-cache loop's own states.
    """
    ids = _as_ids(model, prompt_or_ids)
    lvlm, tok = model.lvlm, model.tokenizer
    llm = lvlm.llm
    L = llm.config.num_hidden_layers
    with trace(model, capture=["llm.*"], to_cpu=False) as t:
        if generate:
            lvlm.generate(ids, max_new_tokens=max_new_tokens, processor_mode=processor_mode,
                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **generate_kwargs)
        else:
            llm(input_ids=ids, use_cache=False)
    seq = t["llm.token_ids"][0].tolist()
    boi = lvlm.token_ids.boi
    norm, head = llm.model.norm, llm.get_output_embeddings()

    def p_boi(h: torch.Tensor) -> np.ndarray:          # h [1, P, D] -> [P]
        return head(h).float().softmax(-1)[0, :, boi].cpu().numpy()

    states = [t["llm.embed"]] + [t[f"llm.layers.{i}.hidden"] for i in range(L)]
    p_lens = np.stack([p_boi(norm(h)) for h in states])                     # [L+1, P]
    p_final = p_boi(t["llm.final"])                                         # [P]
    return BoiTrace(ids=seq, tokens=tok.convert_ids_to_tokens(seq), prompt_length=ids.shape[1],
                    p_final=p_final, p_lens=p_lens,
                    layer_names=["embed"] + [f"layer {i}" for i in range(L)])


# --------------------------------------------------------------------------- 0.0 vs -inf

@dataclass
class BlockingStats:
    """Counts for one processor mode over all prompts (greedy decoding).

    ``outside_steps``: decoding steps at which the row was outside an image block (as the run's own
    processor reads the state). ``would_win``: of those, steps where the published ``0.0`` would leave
    a blocked token (``<img_xxxxx>`` or ``</img>``) as the argmax — measured on the raw scores with
    :func:`~seedx_lab.generation.blocked_token_would_win`, in both modes. ``chose_blocked``: steps
    where the token actually chosen was a blocked one. ``stray_tokens``: blocked tokens in the output
    that are not inside an ``<img>``/``<patch>`` block (a stray token in faithful mode also drags the
    forced continuation after it). ``unblocked_image_tokens``: image tokens outside the ``n`` a block uses
    (the published vocabulary has ``<img_00000>…<img_00099>``, blocks use 64) emitted outside a block:
    neither mode blocks them. ``new_tokens``: tokens generated.
    """

    mode: str
    prompts: int = 0
    new_tokens: int = 0
    outside_steps: int = 0
    would_win: int = 0
    chose_blocked: int = 0
    stray_tokens: int = 0
    unblocked_image_tokens: int = 0

    @property
    def would_win_rate(self) -> float:
        return self.would_win / self.outside_steps if self.outside_steps else 0.0

    @property
    def chose_blocked_rate(self) -> float:
        return self.chose_blocked / self.outside_steps if self.outside_steps else 0.0

    @property
    def stray_rate(self) -> float:
        return self.stray_tokens / self.new_tokens if self.new_tokens else 0.0


@dataclass
class BlockingComparison:
    """:func:`compare_blocking` result: one :class:`BlockingStats` per mode, and the decoded outputs."""

    faithful: BlockingStats
    strict: BlockingStats
    outputs: dict[str, list[str]]

    def table(self) -> list[dict]:
        """One row per mode, counts and rates (for a DataFrame or a printout)."""
        rows = []
        for s in (self.faithful, self.strict):
            rows.append(dict(mode=s.mode, prompts=s.prompts, new_tokens=s.new_tokens, outside_steps=s.outside_steps,
                             would_win=s.would_win, would_win_rate=round(s.would_win_rate, 4),
                             chose_blocked=s.chose_blocked, chose_blocked_rate=round(s.chose_blocked_rate, 4),
                             stray_tokens=s.stray_tokens, stray_rate=round(s.stray_rate, 4),
                             unblocked_image_tokens=s.unblocked_image_tokens))
        return rows


class _OutsideSpy:
    """A logits processor that changes nothing: for each row outside a block (as ``reader`` sees it)
    it notes ``(row, sequence length, would a 0.0-blocked token win)`` from the raw scores."""

    def __init__(self, reader: AutoImageTokenGenerationProcessor):
        self.reader = reader
        self.events: list[tuple[int, int, bool]] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        st = self.reader.states(input_ids)
        win = blocked_token_would_win(scores, self.reader.token_ids, self.reader.num_img_gen_tokens)
        outside = (st.state == OUTSIDE).tolist()
        for row, (o, w) in enumerate(zip(outside, win.tolist())):
            if o:
                self.events.append((row, input_ids.shape[1], bool(w)))
        return scores


@torch.no_grad()
def compare_blocking(model, prompts, max_new_tokens: int = 40, **generate_kwargs) -> BlockingComparison:
    """Greedy generation of every prompt under ``mode="faithful"`` (``0.0``) and ``mode="strict"`` (``-inf``).

    Measures, per mode, how often a "blocked" image token would win under the published rule, how
    often one was actually chosen, and how many image tokens ended up outside image blocks
    (see :class:`BlockingStats`). Prompts are run one at a time (no padding).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    lvlm, tok, tids = model.lvlm, model.tokenizer, model.lvlm.token_ids
    n = lvlm.num_img_tokens
    blocked = set(blocked_token_ids(tids, n))
    unblocked = {i for w, i in tok.get_vocab().items() if _IMG_NAME.fullmatch(w)} - blocked
    result, outputs = {}, {}
    for mode in ("faithful", "strict"):
        stats, texts = BlockingStats(mode), []
        for prompt in prompts:
            ids = _as_ids(model, prompt)
            proc = AutoImageTokenGenerationProcessor(token_ids=tids, num_img_gen_tokens=n, mode=mode)
            spy = _OutsideSpy(proc)
            out = lvlm.generate(ids, max_new_tokens=max_new_tokens, logits_processor=[spy, proc], do_sample=False,
                                processor_mode=mode, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id, **generate_kwargs)
            seq = out.sequences[0].tolist()
            T = out.prompt_length
            stats.prompts += 1
            stats.new_tokens += len(seq) - T
            for _row, length, win in spy.events:
                stats.outside_steps += 1
                stats.would_win += win
                stats.chose_blocked += length < len(seq) and seq[length] in blocked
            inside = set()
            for blk in find_image_blocks(seq, tids):
                inside.update(range(blk.start, blk.end))
            stats.stray_tokens += sum(1 for i in range(T, len(seq)) if seq[i] in blocked and i not in inside)
            stats.unblocked_image_tokens += sum(1 for i in range(T, len(seq)) if seq[i] in unblocked and i not in inside)
            texts.append(model.decode(seq[T:], keep_image_tokens=True))
        result[mode], outputs[mode] = stats, texts
    return BlockingComparison(result["faithful"], result["strict"], outputs)


# --------------------------------------------------------------------------- interleaved generation

@dataclass
class InterleaveTrace:
    """:func:`interleave` result.

    ``result``: the :class:`~seedx_lab.model.InterleavedResult` (``text``, ``images``, ``segments``).
    ``boi_positions``: index in the full sequence of every generated ``<img>``; ``p_boi``: P(``<img>``)
    before processing at the step that chose it. ``steps``: the processor decisions of the run (see
    ``processor.decisions`` in :mod:`seedx_lab.trace`). ``capped``: ``max_images`` blocks were opened,
    after which ``<img>`` was banned.
    """

    result: object
    boi_positions: list[int]
    p_boi: list[float]
    steps: list[dict]
    capped: bool

    @property
    def segments(self) -> list:
        return self.result.segments

    @property
    def images(self) -> list:
        return self.result.images

    @property
    def text(self) -> str:
        return self.result.text

    def p_boi_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """``(positions, P(<img>))`` at every step taken outside an image block."""
        T = self.result.output.prompt_length
        pts = [(T - 1 + d["step"], d["p_boi"]) for d in self.steps if d["state"] == "outside"]
        return np.array([p for p, _ in pts], dtype=int), np.array([q for _, q in pts])


@torch.no_grad()
def interleave(model, prompt: str, max_images: int = 3, max_new_tokens: int = 240, images=None,
               num_inference_steps: int | None = None, seed: int | None = 0, processor_mode: str = "faithful",
               **generate_kwargs) -> InterleaveTrace:
    """Interleaved text and images where every image starts at the model's own ``<img>`` prediction.

    Wraps :meth:`SeedX.generate` (greedy unless ``do_sample=True`` is passed) under a trace of the
    processor decisions, so the step that chose each ``<img>`` is known (forced blocks still take one
    forward pass each). At most ``max_images`` images. A prompt ending in ``<img>`` is refused: that first image would
    be the prompt's doing, not a prediction.
    """
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if prompt.rstrip().endswith(BOI_TOKEN):
        raise ValueError("the prompt ends in <img>, which forces the first image; interleave measures images the "
                         "model starts itself: drop the trailing <img> (or use model.generate_image)")
    if max_images < 0:
        raise ValueError(f"max_images must be >= 0, got {max_images}")
    with trace(model, capture=["processor.decisions"]) as t:
        res = model.generate(prompt, images=images, max_new_tokens=max_new_tokens, max_images=max_images,
                             num_inference_steps=num_inference_steps, seed=seed, processor_mode=processor_mode,
                             **generate_kwargs)
    steps = [d for d in t["processor.decisions"] if d["row"] == 0]
    seq = res.output.sequences[0].tolist()
    T, boi = res.output.prompt_length, model.lvlm.token_ids.boi
    by_step = {d["step"]: d for d in steps}
    positions, probs = [], []
    for i in range(T, len(seq)):
        if seq[i] == boi:
            d = by_step.get(i - T)
            if d is None or d["state"] != "outside":
                raise RuntimeError(f"no outside-block decision recorded for the <img> at position {i}")
            positions.append(i)
            probs.append(d["p_boi"])
    return InterleaveTrace(res, positions, probs, steps, capped=len(positions) >= max_images)
