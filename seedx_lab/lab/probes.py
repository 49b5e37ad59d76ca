"""BOI analysis: when does the model want to start an image, and what does the processor do about it?

* :func:`boi_trace` — P(``<img>``) at every position of a sequence, from the final layer and through a
  logit lens on every layer (final norm + ``lm_head`` applied to each layer's residual stream).
* :func:`compare_blocking` — greedy generation under the published ``0.0`` "blocking" and under
  ``-inf`` (``mode="strict"``), counting how often a "blocked" image token would win, was chosen, and
  ended up outside any image block.
* :func:`interleave` — interleaved text and images where every image starts at the model's own
  ``<img>`` prediction, with where and how confidently each ``<img>`` was predicted.

Causal probes (each returns a dataclass with the data and ``.plot()``), built on ``trace(edits=...)``:

* :func:`activation_patching` — layer x position grid of logit(``<img>``) with one hidden state moved
  between two matched prompts (both ways, normalised), all cells of a direction in one batch;
  :func:`patched_continuation` continues from one patched cell;
* :func:`attention_knockout` — P(``<img>``) with the last position's attention to chosen tokens blocked in
  windows of layers;
* :func:`linear_probes` — per-layer logistic probes for "next is ``<img>``", held-out stories, a
  shuffled-label control (:func:`story_states` collects the states once for several probes);
* :func:`steering` — a difference-of-means direction and its dose-response;
* :func:`calibration` — reliability diagram and precision-recall of P(``<img>``);
* :func:`sampling_regime` — irregular image tokens the processor lets through when sampling.

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
from .trace import add, knockout, patch_from, trace

__all__ = ["BoiTrace", "boi_trace", "BlockingStats", "BlockingComparison", "compare_blocking",
           "InterleaveTrace", "interleave", "PatchingGrid", "activation_patching", "patched_continuation",
           "KnockoutResult", "attention_knockout", "find_phrase", "LinearProbes", "linear_probes", "fit_logistic",
           "Steering", "steering", "Calibration", "calibration", "calibration_from", "SamplingRegime",
           "sampling_regime", "count_irregular", "StoryStates", "story_states"]

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

    A Type-A model (:class:`~seedx_lab.typea.model.ChameleonTiny`) is read the same way from its LLM (see
    :func:`_boi_trace_typea`); ``generate_kwargs`` are then those of its ``generate_ids``.
    """
    ids = _as_ids(model, prompt_or_ids)
    if _is_typea(model):
        if processor_mode != "faithful":
            raise ValueError("processor_mode is SeedX's; a Type-A model has one processor (bans are -inf): "
                             "leave it out")
        return _boi_trace_typea(model, ids, generate, max_new_tokens, **generate_kwargs)
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


def _is_typea(model) -> bool:
    from ..typea.model import ChameleonTiny

    return isinstance(model, ChameleonTiny)


@torch.no_grad()
def _boi_trace_typea(model, ids: torch.Tensor, generate: bool, max_new_tokens: int, **generate_kwargs) -> BoiTrace:
    """:func:`boi_trace` of a ChameleonTiny: ``ids [1, T]`` (continued by ``model.generate_ids`` when
    ``generate``) in one forward pass of ``model.llm``; forward hooks read the embeddings and each decoder
    layer's output ``[1, P, D]``, the lens applies the final norm and ``lm_head`` to them.

    With ``generate=True`` the states are those of one pass over prompt + new tokens, not the decoding
    loop's own (they agree up to float rounding: the loop's KV cache holds the same keys)."""
    llm, prompt_length = model.llm, ids.shape[1]
    if generate:
        ids = torch.cat([ids, model.generate_ids(ids, max_new_tokens, **generate_kwargs)], dim=1)
    states: list[torch.Tensor] = []

    def keep(_mod, _args, out):
        states.append(out[0] if isinstance(out, tuple) else out)

    hooks = [llm.model.embed_tokens.register_forward_hook(keep)]
    hooks += [layer.register_forward_hook(keep) for layer in llm.model.layers]
    try:
        logits = llm(input_ids=ids, use_cache=False).logits                         # [1, P, V]
    finally:
        for h in hooks:
            h.remove()
    boi, norm, head = model.token_ids.boi, llm.model.norm, llm.get_output_embeddings()
    p_lens = np.stack([head(norm(h)).float().softmax(-1)[0, :, boi].cpu().numpy() for h in states])   # [L+1, P]
    seq = ids[0].tolist()
    L = len(states) - 1
    return BoiTrace(ids=seq, tokens=model.tokenizer.convert_ids_to_tokens(seq), prompt_length=prompt_length,
                    p_final=logits.float().softmax(-1)[0, :, boi].cpu().numpy(), p_lens=p_lens,
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


# =========================================================================== causal probes
#
# Conventions shared below: a *site* is where a hidden state is read or changed: row 0 ``llm.embed``
# (the input embeddings), row ``i + 1`` ``llm.layers.{i}.hidden``; P(``<img>``) and logit(``<img>``)
# are read at the last position of a prompt (the prediction of the token after it), raw scores
# before any logits processor.

def _site_names(model) -> list[str]:
    L = model.lvlm.llm.config.num_hidden_layers
    return ["llm.embed"] + [f"llm.layers.{i}.hidden" for i in range(L)]


def _site_labels(model) -> list[str]:
    return ["embed"] + [f"layer {i}" for i in range(model.lvlm.llm.config.num_hidden_layers)]


def _last_logits(model, ids: torch.Tensor, edits=None) -> torch.Tensor:
    """Raw logits at the last position of each row ``[B, V]`` (float32), under ``edits``."""
    with trace(model, capture=[], edits=edits):
        return model.lvlm.llm(input_ids=ids, use_cache=False).logits[:, -1].float()


def _wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a rate ``k / n``."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


# --------------------------------------------------------------------------- activation patching

@dataclass
class PatchingGrid:
    """:func:`activation_patching` result.

    ``clean_ids``/``corrupt_ids [P]`` and their ``tokens``; ``sites``: the row labels (embed, layer i).
    ``logit_clean``, ``logit_corrupt``: logit(``<img>``) at the last position of each prompt.
    ``denoise [sites, P]``: the clean state patched into the corrupt run at (site, position), as
    ``(patched - corrupt) / (clean - corrupt)`` (1: the patch alone restores the clean logit).
    ``noise [sites, P]``: the corrupt state patched into the clean run, the same formula (0: the patch
    alone destroys it). ``raw_denoise``/``raw_noise``: the patched logits themselves.
    """

    clean_ids: list[int]
    corrupt_ids: list[int]
    clean_tokens: list[str]
    corrupt_tokens: list[str]
    sites: list[str]
    logit_clean: float
    logit_corrupt: float
    raw_denoise: np.ndarray
    raw_noise: np.ndarray

    def _norm(self, raw: np.ndarray) -> np.ndarray:
        gap = self.logit_clean - self.logit_corrupt
        return (raw - self.logit_corrupt) / gap if abs(gap) > 1e-12 else np.full_like(raw, np.nan)

    @property
    def denoise(self) -> np.ndarray:
        return self._norm(self.raw_denoise)

    @property
    def noise(self) -> np.ndarray:
        return self._norm(self.raw_noise)

    def top(self, k: int = 3, which: str = "denoise") -> list[tuple[str, int, str, float]]:
        """The ``k`` cells with the largest normalised effect: ``(site, position, token, value)``."""
        g = self.denoise if which == "denoise" else 1 - self.noise
        order = np.argsort(-np.nan_to_num(g, nan=-np.inf).ravel())[:k]
        return [(self.sites[i // g.shape[1]], int(i % g.shape[1]), self.clean_tokens[i % g.shape[1]],
                 float(g.ravel()[i])) for i in order]

    def plot(self):
        """Two heat maps (sites x positions): clean -> corrupt and corrupt -> clean; returns the Figure."""
        from matplotlib.figure import Figure

        P = len(self.clean_tokens)
        fig = Figure(figsize=(max(6.0, min(0.32 * P + 2.5, 18.0)), 5.2), layout="constrained")
        axes = fig.subplots(2, 1, sharex=True)
        labels = [a if a == b else f"{a} / {b}" for a, b in zip(self.clean_tokens, self.corrupt_tokens)]
        for ax, grid, title in ((axes[0], self.denoise, "clean state patched into the corrupt run"),
                                (axes[1], self.noise, "corrupt state patched into the clean run")):
            im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
            ax.set_yticks(range(len(self.sites)), self.sites, fontsize=7)
            ax.set_title(f"{title}: (patched - corrupt) / (clean - corrupt) of logit(<img>)", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.025)
        axes[1].set_xticks(range(P), labels, rotation=90, fontsize=7)
        return fig


def _matched_ids(model, clean, corrupt) -> tuple[torch.Tensor, torch.Tensor]:
    a, b = _as_ids(model, clean), _as_ids(model, corrupt)
    if a.shape != b.shape:
        ta, tb = model.tokenizer.convert_ids_to_tokens(a[0].tolist()), model.tokenizer.convert_ids_to_tokens(b[0].tolist())
        raise ValueError(f"activation patching needs prompts of the same token length (positions line up): clean has "
                         f"{a.shape[1]} tokens {ta}, corrupt {b.shape[1]} {tb}")
    return a, b


def _patched_logits(model, target: torch.Tensor, source_trace, cells: list[tuple[int, int]], boi: int,
                    batch_size: int | None) -> np.ndarray:
    """logit(<img>) of ``target`` with one cell ``(site, position)`` patched from ``source_trace`` per row:
    the cells are stacked along the batch (``batch_size`` rows per forward, None: all at once)."""
    names = _site_names(model)
    out = np.empty(len(cells))
    step = batch_size or len(cells)
    for s in range(0, len(cells), step):
        chunk = cells[s: s + step]
        edits = {}
        for site, name in enumerate(names):
            rows = [r for r, (si, _) in enumerate(chunk) if si == site]
            if not rows:
                continue
            pos = torch.tensor([chunk[r][1] for r in rows])
            src = source_trace[name]

            def fn(value, ctx, rows=torch.tensor(rows), pos=pos, src=src):
                value = value.clone()
                value[rows.to(value.device), pos.to(value.device)] = src[0, pos].to(value.device, value.dtype)
                return value
            edits[name] = fn
        ids = target.expand(len(chunk), -1)
        out[s: s + len(chunk)] = _last_logits(model, ids, edits)[:, boi].cpu().numpy()
    return out


@torch.no_grad()
def activation_patching(model, clean, corrupt, batched: bool = True, batch_size: int | None = None) -> PatchingGrid:
    """Layer x position activation patching of logit(``<img>``) between two prompts of equal length.

    ``clean`` triggers a picture, ``corrupt`` is the matched prompt that does not (strings, BOS added,
    or ids). Every (site, position) cell is patched from one run into the other, both ways. With
    ``batched=True`` all cells of a direction are rows of one batch (``batch_size`` rows per forward pass
    if given); ``batched=False`` runs one forward pass per cell (the reference the benchmark times).
    """
    a, b = _matched_ids(model, clean, corrupt)
    boi, tok = model.token_ids.boi, model.tokenizer
    names = _site_names(model)
    with trace(model, capture=names) as tc:
        lc = model.lvlm.llm(input_ids=a, use_cache=False).logits[0, -1, boi].item()
    with trace(model, capture=names) as tx:
        lx = model.lvlm.llm(input_ids=b, use_cache=False).logits[0, -1, boi].item()
    P = a.shape[1]
    cells = [(s, p) for s in range(len(names)) for p in range(P)]
    grids = []
    for target, source in ((b, tc), (a, tx)):
        if batched:
            raw = _patched_logits(model, target, source, cells, boi, batch_size)
        else:
            raw = np.array([_last_logits(model, target, {names[s]: patch_from(source[names[s]], positions=[p])})[0, boi]
                            .item() for s, p in cells])
        grids.append(raw.reshape(len(names), P))
    return PatchingGrid(a[0].tolist(), b[0].tolist(), tok.convert_ids_to_tokens(a[0].tolist()),
                        tok.convert_ids_to_tokens(b[0].tolist()), _site_labels(model), lc, lx, grids[0], grids[1])


@torch.no_grad()
def patched_continuation(model, clean, corrupt, site: int, position: int, max_new_tokens: int = 20,
                         direction: str = "denoise") -> tuple[float, str]:
    """Patch one cell (as in :func:`activation_patching`) and let the model go on greedily.

    Returns ``(P(<img>) at the last prompt position, the decoded continuation)``; the patch acts in the
    prompt pass (its position is in the prompt), the continuation reads the patched KV cache.
    """
    a, b = _matched_ids(model, clean, corrupt)
    source, target = (a, b) if direction == "denoise" else (b, a)
    names = _site_names(model)
    if not 0 <= site < len(names) or not 0 <= position < a.shape[1]:
        raise ValueError(f"cell ({site}, {position}) outside the grid of {len(names)} sites x {a.shape[1]} positions")
    with trace(model, capture=[names[site]]) as src:
        model.lvlm.llm(input_ids=source, use_cache=False)
    tok = model.tokenizer
    with trace(model, capture=["llm.final"], edits={names[site]: patch_from(src, positions=[position])}) as t:
        out = model.lvlm.generate(target, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id, max_blocks=1)
    head = model.lvlm.llm.get_output_embeddings()
    p = head(t["llm.final"][:, target.shape[1] - 1].to(model.device)).float().softmax(-1)[0, model.token_ids.boi].item()
    return p, model.decode(out.sequences[0, target.shape[1]:].tolist(), keep_image_tokens=False)


# --------------------------------------------------------------------------- attention knockout

@dataclass
class KnockoutResult:
    """:func:`attention_knockout` result: P(``<img>``) at the last position with attention from it to
    ``keys`` blocked in each window of layers ``windows[j]`` (``p_knocked[j]``), and with nothing blocked
    (``p_base``). ``tokens``: the prompt; ``keys``: the blocked positions."""

    tokens: list[str]
    keys: list[int]
    windows: list[tuple[int, ...]]
    p_base: float
    p_knocked: np.ndarray

    @property
    def drop(self) -> np.ndarray:
        """``p_base - p_knocked`` per window."""
        return self.p_base - self.p_knocked

    def plot(self):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 3.2), layout="constrained")
        ax = fig.subplots()
        x = np.arange(len(self.windows))
        ax.bar(x, self.p_knocked, color="tab:purple", label="keys knocked out")
        ax.axhline(self.p_base, color="black", ls="--", lw=1, label="nothing knocked out")
        ax.set_xticks(x, [f"layers {w[0]}-{w[-1]}" if len(w) > 1 else f"layer {w[0]}" for w in self.windows],
                      fontsize=7, rotation=30)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("P(<img>) at the last position")
        ax.set_title("blocked: " + " ".join(self.tokens[k] for k in self.keys)[:80], fontsize=9)
        ax.legend(fontsize=7)
        return fig


@torch.no_grad()
def attention_knockout(model, prompt, keys, window: int = 1, windows=None) -> KnockoutResult:
    """Block the attention from the last position of ``prompt`` to ``keys`` (positions, or a phrase whose
    last occurrence in the prompt is blocked) in windows of ``window`` consecutive layers (or the given
    ``windows``, lists of layer indices); all windows are rows of one batch."""
    ids = _as_ids(model, prompt)
    tok = model.tokenizer
    tokens = tok.convert_ids_to_tokens(ids[0].tolist())
    if isinstance(keys, str):
        keys = find_phrase(model, ids[0].tolist(), keys)
    keys = [int(k) for k in keys]
    T = ids.shape[1]
    if any(not 0 <= k < T - 1 for k in keys):
        raise ValueError(f"keys must be earlier positions 0..{T - 2} of the prompt, got {keys}")
    L = model.lvlm.llm.config.num_hidden_layers
    if windows is None:
        if not 1 <= window <= L:
            raise ValueError(f"window must be 1..{L} layers, got {window}")
        windows = [tuple(range(s, s + window)) for s in range(L - window + 1)]
    windows = [tuple(int(i) for i in w) for w in windows]
    edits = {}
    for i in range(L):
        rows = [1 + j for j, w in enumerate(windows) if i in w]
        if rows:
            edits[f"llm.layers.{i}.attn"] = knockout(keys, positions=[-1], rows=rows)
    p = _last_logits(model, ids.expand(len(windows) + 1, -1), edits).softmax(-1)[:, model.token_ids.boi].cpu().numpy()
    return KnockoutResult(tokens, keys, windows, float(p[0]), p[1:])


def find_phrase(model, ids: list[int], phrase: str) -> list[int]:
    """Positions of the last occurrence of ``phrase`` (tokenised without BOS) in ``ids``."""
    ph = model.tokenizer.encode(phrase, add_special_tokens=False)
    for s in range(len(ids) - len(ph), -1, -1):
        if ids[s: s + len(ph)] == ph:
            return list(range(s, s + len(ph)))
    raise ValueError(f"phrase {phrase!r} ({model.tokenizer.convert_ids_to_tokens(ph)}) is not in the prompt")


# --------------------------------------------------------------------------- data: free positions of stories

@dataclass
class StoryStates:
    """:func:`story_states`: at every free position (whose next token the model chooses) of some stories,
    ``x``: one ``[N, D]`` array per site (embed, layer i), ``y [N]``: the next token is ``<img>``,
    ``p [N]``: P(``<img>``) from the final layer. ``stories``: how many stories."""

    x: list
    y: np.ndarray
    p: np.ndarray
    stories: int


def _states(model, samples) -> StoryStates:
    return samples if isinstance(samples, StoryStates) else story_states(model, samples)


@torch.no_grad()
def story_states(model, samples) -> StoryStates:
    """Teacher-forced pass over each story (``StorySample`` or list of segments; pictures as full
    ``<img>`` blocks of image tokens, no image features), read at the free positions."""
    from ..sequences import encode_pieces, story_pieces

    tid = model.token_ids
    names = _site_names(model)
    feats = [[] for _ in names]
    labels, probs = [], []
    for sample in samples:
        segs = sample.segments if hasattr(sample, "segments") else sample
        ids = encode_pieces(model, story_pieces(segs))[0]
        forced = set()
        for blk in find_image_blocks(ids, tid):
            forced.update(range(blk.start, blk.end - 1))
        free = [i for i in range(len(ids) - 1) if i not in forced]
        x = torch.tensor([ids], device=model.device)
        with trace(model, capture=names) as t:
            logits = model.lvlm.llm(input_ids=x, use_cache=False).logits[0].float()
        for j, n in enumerate(names):
            feats[j].append(t[n][0, free].float().cpu().numpy())
        labels += [ids[i + 1] == tid.boi for i in free]
        probs.append(logits.softmax(-1)[free, tid.boi].cpu().numpy())
    return StoryStates([np.concatenate(f) for f in feats], np.array(labels, dtype=bool), np.concatenate(probs),
                       len(samples))


# --------------------------------------------------------------------------- linear probes

def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 200, seed: int = 0):
    """Class-balanced L2 logistic regression (torch LBFGS). Returns ``predict(x) -> P(y=1)``.
    Features are standardised with the training mean/std."""
    g = torch.Generator().manual_seed(seed)
    X = torch.as_tensor(x, dtype=torch.float64)
    Y = torch.as_tensor(y, dtype=torch.float64)
    mu, sd = X.mean(0), X.std(0).clamp_min(1e-6)
    X = (X - mu) / sd
    pos = Y.mean().clamp(1e-6, 1 - 1e-6)
    w_row = torch.where(Y > 0, 0.5 / pos, 0.5 / (1 - pos))
    w = (torch.randn(X.shape[1], generator=g, dtype=torch.float64) * 1e-3).requires_grad_()
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(X @ w + b, Y, weight=w_row)
                + l2 * (w * w).sum())
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w, b = w.detach(), b.detach()

    def predict(xn: np.ndarray) -> np.ndarray:
        Z = (torch.as_tensor(xn, dtype=torch.float64) - mu) / sd
        return torch.sigmoid(Z @ w + b).numpy()
    return predict


def _balanced_accuracy(y: np.ndarray, p: np.ndarray) -> float:
    pred = p >= 0.5
    return 0.5 * (float((pred[y]).mean()) + float((~pred[~y]).mean()))


@dataclass
class LinearProbes:
    """:func:`linear_probes` result, one entry per site (embed, layer i): balanced accuracy of a
    logistic probe for "the next token is ``<img>``" on the held-out positions (``acc``), the same with
    labels shuffled before fitting (``acc_shuffled``, the control), and on its own training positions
    (``acc_train``). ``n_train``/``n_test`` (positives ``pos_train``/``pos_test``): positions."""

    sites: list[str]
    acc: np.ndarray
    acc_shuffled: np.ndarray
    acc_train: np.ndarray
    n_train: int
    n_test: int
    pos_train: int
    pos_test: int

    def plot(self):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.5, 3.2), layout="constrained")
        ax = fig.subplots()
        x = np.arange(len(self.sites))
        ax.plot(x, self.acc, "o-", label=f"held-out (n={self.n_test}, {self.pos_test} <img>)")
        ax.plot(x, self.acc_train, "s:", color="gray", label=f"fitted on (n={self.n_train})")
        ax.plot(x, self.acc_shuffled, "x--", color="tab:red", label="shuffled labels (control)")
        ax.axhline(0.5, color="black", lw=0.6)
        ax.set_xticks(x, self.sites, fontsize=8)
        ax.set_ylim(0.3, 1.02)
        ax.set_ylabel("balanced accuracy")
        ax.set_title('linear probe: "the next token is <img>"', fontsize=9)
        ax.legend(fontsize=7)
        return fig


@torch.no_grad()
def linear_probes(model, train_samples, test_samples, seed: int = 0, l2: float = 1e-2, shuffles: int = 5,
                  steps: int = 100) -> LinearProbes:
    """Fit one logistic probe per site on the free positions of ``train_samples`` (stories, lists of
    segments, or their :func:`story_states`) and score it on those of ``test_samples`` (balanced
    accuracy, threshold 0.5). The control: probes fitted on the same features with the labels
    permuted (``shuffles`` permutations, mean), scored on the held-out positions' true labels."""
    tr, te = _states(model, train_samples), _states(model, test_samples)
    xtr, ytr, xte, yte = tr.x, tr.y, te.x, te.y
    if ytr.all() or not ytr.any():
        raise ValueError("the training positions need both labels (stories with and without <img> next)")
    rng = np.random.default_rng(seed)
    perms = [rng.permutation(ytr) for _ in range(shuffles)]
    acc, acc_s, acc_t = [], [], []
    for a, b in zip(xtr, xte):
        f = fit_logistic(a, ytr, l2=l2, seed=seed, steps=steps)
        acc.append(_balanced_accuracy(yte, f(b)))
        acc_t.append(_balanced_accuracy(ytr, f(a)))
        acc_s.append(np.mean([_balanced_accuracy(yte, fit_logistic(a, yp, l2=l2, seed=seed, steps=steps)(b))
                              for yp in perms]))
    return LinearProbes(_site_labels(model), np.array(acc), np.array(acc_s), np.array(acc_t), len(ytr), len(yte),
                        int(ytr.sum()), int(yte.sum()))


# --------------------------------------------------------------------------- steering

@dataclass
class Steering:
    """:func:`steering` result. ``direction [D]``: mean state before ``<img>`` minus mean state
    elsewhere at ``site`` (training positions), unit norm; ``norm``: the length of the raw difference.
    ``doses``: multiples of ``norm`` added at the last position of each pass. ``p_trigger[d]``: mean
    P(``<img>``) at the end of the trigger prompts; ``p_plain[d]``: the same after plain text;
    ``false_boi[d]``: plain-text prompts whose greedy continuation (``max_new_tokens``) opens a picture,
    out of ``n_plain``."""

    site: str
    direction: np.ndarray
    norm: float
    doses: np.ndarray
    p_trigger: np.ndarray
    p_plain: np.ndarray
    false_boi: np.ndarray
    n_trigger: int
    n_plain: int

    def plot(self):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6.5, 3.2), layout="constrained")
        ax = fig.subplots()
        ax.plot(self.doses, self.p_trigger, "o-", label=f"P(<img>) after a trigger (n={self.n_trigger})")
        ax.plot(self.doses, self.p_plain, "s-", label=f"P(<img>) after plain text (n={self.n_plain})")
        ax.plot(self.doses, self.false_boi / max(self.n_plain, 1), "x--", color="tab:red",
                label="plain text: greedy run opens <img>")
        ax.set_xlabel(f"dose (multiples of |mean difference| = {self.norm:.2f}) added at {self.site}")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
        ax.set_title("steering along the <img> direction", fontsize=9)
        return fig


@torch.no_grad()
def steering(model, train_samples, trigger_prompts, plain_prompts, layer: int = 0,
             doses=(-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0), max_new_tokens: int = 12) -> Steering:
    """Difference-of-means direction for "next is ``<img>``" at ``llm.layers.{layer}.hidden`` and its
    dose-response: added (``dose * norm * unit``) at the last position of every pass (so also at each
    token of a greedy continuation)."""
    L = model.lvlm.llm.config.num_hidden_layers
    if not -L <= layer < L:
        raise ValueError(f"layer must be in [-{L}, {L}), got {layer}")
    layer %= L
    tr = _states(model, train_samples)
    x, y = tr.x, tr.y
    h = x[layer + 1]
    diff = h[y].mean(0) - h[~y].mean(0)
    norm = float(np.linalg.norm(diff))
    unit = torch.tensor(diff / norm, dtype=model.dtype, device=model.device)
    name = f"llm.layers.{layer}.hidden"
    boi, tok = model.token_ids.boi, model.tokenizer
    pt, pp, fb = [], [], []
    for d in doses:
        edit = {name: add(unit * (float(d) * norm), positions=[-1])}

        def p_of(prompts):
            return float(np.mean([_last_logits(model, _as_ids(model, s), edit).softmax(-1)[0, boi].item()
                                  for s in prompts]))
        pt.append(p_of(trigger_prompts))
        pp.append(p_of(plain_prompts))
        opened = 0
        for s in plain_prompts:
            ids = _as_ids(model, s)
            with trace(model, capture=[], edits=edit):
                out = model.lvlm.generate(ids, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id,
                                          pad_token_id=tok.pad_token_id, max_blocks=1)
            opened += boi in out.sequences[0, ids.shape[1]:].tolist()
        fb.append(opened)
    return Steering(name, diff / norm, norm, np.array(doses, dtype=float), np.array(pt), np.array(pp),
                    np.array(fb), len(trigger_prompts), len(plain_prompts))


# --------------------------------------------------------------------------- calibration

@dataclass
class Calibration:
    """:func:`calibration` result over the free positions of held-out stories.

    ``p [N]``: P(``<img>``) (final layer, raw), ``y [N]``: the next token is ``<img>``. Reliability
    bins: ``bin_edges``, ``bin_count``, ``bin_p`` (mean prediction), ``bin_freq`` (observed rate);
    ``ece``: expected calibration error. ``precision``/``recall``/``thresholds``: the PR curve;
    ``average_precision``: its area (step-wise)."""

    p: np.ndarray
    y: np.ndarray
    bin_edges: np.ndarray
    bin_count: np.ndarray
    bin_p: np.ndarray
    bin_freq: np.ndarray
    ece: float
    precision: np.ndarray
    recall: np.ndarray
    thresholds: np.ndarray
    average_precision: float

    def plot(self):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(9, 3.6), layout="constrained")
        a, b = fig.subplots(1, 2)
        ok = self.bin_count > 0
        a.plot([0, 1], [0, 1], color="gray", lw=0.8)
        a.plot(self.bin_p[ok], self.bin_freq[ok], "o-")
        for x, f, c in zip(self.bin_p[ok], self.bin_freq[ok], self.bin_count[ok]):
            a.annotate(str(int(c)), (x, f), fontsize=6, xytext=(2, 2), textcoords="offset points")
        a.set_xlabel("mean P(<img>) in bin")
        a.set_ylabel("observed <img> rate")
        a.set_title(f"reliability (n={len(self.y)}, ECE {self.ece:.3f})", fontsize=9)
        b.plot(self.recall, self.precision, "-")
        b.set_xlabel("recall")
        b.set_ylabel("precision")
        b.set_xlim(0, 1.02)
        b.set_ylim(0, 1.02)
        b.set_title(f"precision-recall ({int(self.y.sum())} <img>, AP {self.average_precision:.3f})", fontsize=9)
        return fig


def calibration_from(p: np.ndarray, y: np.ndarray, bins: int = 10) -> Calibration:
    """Reliability bins and precision-recall of scores ``p`` against labels ``y`` (numpy arrays)."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=bool)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    sum_p = np.bincount(which, weights=p, minlength=bins)
    sum_y = np.bincount(which, weights=y.astype(float), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bp, bf = sum_p / count, sum_y / count
    ece = float(np.nansum(count * np.abs(bp - bf)) / max(len(p), 1))
    order = np.argsort(-p, kind="stable")
    tp = np.cumsum(y[order])
    k = np.arange(1, len(p) + 1)
    last = np.r_[p[order][1:] != p[order][:-1], True]           # one point per distinct threshold
    prec, rec = (tp / k)[last], (tp / max(int(y.sum()), 1))[last]
    ap = float(np.sum(np.diff(np.r_[0.0, rec]) * prec))
    return Calibration(p, y, edges, count, bp, bf, ece, prec, rec, p[order][last], ap)


@torch.no_grad()
def calibration(model, samples, bins: int = 10) -> Calibration:
    """P(``<img>``) against "the next token is ``<img>``" at every free position of ``samples``
    (held-out stories, teacher forced)."""
    st = _states(model, samples)
    return calibration_from(st.p, st.y, bins)


# --------------------------------------------------------------------------- the sampling regime

@dataclass
class SamplingRegime:
    """:func:`sampling_regime` result: sampled generation under one processor mode, counted per run.

    ``runs``: prompts x samples; ``runs_with[kind]`` and ``tokens[kind]`` for
    ``stray_eoi`` (a ``</img>`` that closes no block), ``unforced_img`` (an image token beyond the 64 a
    block uses, ``<img_00064…>``, outside a block), ``unfinished`` (a block opened and never drawn
    through: fewer than 64 tokens or no ``</img>``, while the run went on), ``cut_by_budget`` (a block
    still open when ``max_new_tokens`` ran out), ``blocks`` (blocks opened). ``new_tokens``."""

    mode: str
    runs: int
    new_tokens: int
    runs_with: dict
    tokens: dict
    examples: dict

    def rate(self, kind: str) -> tuple[float, float, float]:
        """``(rate of runs with kind, 95 % Wilson low, high)``."""
        k = self.runs_with[kind]
        lo, hi = _wilson(k, self.runs)
        return k / max(self.runs, 1), lo, hi

    def lines(self) -> list[str]:
        out = []
        for kind in ("stray_eoi", "unforced_img", "unfinished", "cut_by_budget"):
            r, lo, hi = self.rate(kind)
            out.append(f"{kind:>13s}: {self.runs_with[kind]}/{self.runs} runs ({r:.2f}, 95% CI {lo:.2f}-{hi:.2f}), "
                       f"{self.tokens[kind]} occurrences")
        return out

    def plot(self):
        from matplotlib.figure import Figure

        fig = Figure(figsize=(6, 3), layout="constrained")
        ax = fig.subplots()
        kinds = ["stray_eoi", "unforced_img", "unfinished"]
        r = [self.rate(k) for k in kinds]
        ax.bar(range(3), [x[0] for x in r], yerr=[[x[0] - x[1] for x in r], [x[2] - x[0] for x in r]],
               color="tab:orange", capsize=4)
        ax.set_xticks(range(3), ["stray </img>", "unforced <img_00064+>", "block not drawn through"], fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.set_ylabel(f"runs with it (n={self.runs})")
        ax.set_title(f"sampling, processor {self.mode}", fontsize=9)
        return fig


def count_irregular(seq: list[int], start: int, token_ids, n_block: int, unforced_ids: set) -> dict:
    """Irregular image tokens in ``seq[start:]``: stray ``</img>``, unforced image ids outside a block,
    blocks opened and not drawn through (``n_block`` tokens and ``</img>``) although the run went on,
    blocks still open when the run ended (``cut_by_budget``), blocks opened."""
    counts = dict(stray_eoi=0, unforced_img=0, unfinished=0, cut_by_budget=0, blocks=0)
    i, n = start, len(seq)
    img = set(token_ids.img)
    while i < n:
        t = seq[i]
        if t == token_ids.boi:
            counts["blocks"] += 1
            j = i + 1
            while j < n and seq[j] in img:
                j += 1
            if j >= n and j - i - 1 < n_block:
                counts["cut_by_budget"] += 1         # the run ended inside the block: max_new_tokens
            elif not (j - i - 1 == n_block and j < n and seq[j] == token_ids.eoi):
                counts["unfinished"] += 1
            i = j + 1 if j < n and seq[j] == token_ids.eoi else j
            continue
        if t == token_ids.eoi:
            counts["stray_eoi"] += 1
        elif t in unforced_ids:
            counts["unforced_img"] += 1
        i += 1
    return counts


@torch.no_grad()
def sampling_regime(model, prompts, samples: int = 4, max_new_tokens: int = 100, temperature: float = 1.0,
                    top_p: float = 1.0, mode: str = "faithful", seed: int = 0) -> SamplingRegime:
    """Sample ``samples`` continuations of each prompt (``do_sample=True``; step by step, so the
    processor decides every token) and count the irregular image tokens of :func:`count_irregular`."""
    if isinstance(prompts, str):
        prompts = [prompts]
    tok, tids, lvlm = model.tokenizer, model.token_ids, model.lvlm
    n = lvlm.num_img_tokens
    unforced = {i for w, i in tok.get_vocab().items() if _IMG_NAME.fullmatch(w)} - set(tids.img[:n])
    g = torch.Generator(device=model.device).manual_seed(seed)
    runs, new = 0, 0
    runs_with = dict(stray_eoi=0, unforced_img=0, unfinished=0, cut_by_budget=0, blocks=0)
    tokens = dict(runs_with)
    examples: dict = {}
    for prompt in prompts:
        ids = _as_ids(model, prompt)
        for _ in range(samples):
            out = lvlm.generate(ids, max_new_tokens=max_new_tokens, do_sample=True, temperature=temperature,
                                top_p=top_p, generator=g, processor_mode=mode, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id)
            seq = out.sequences[0].tolist()
            c = count_irregular(seq, ids.shape[1], tids, n, unforced)
            runs += 1
            new += len(seq) - ids.shape[1]
            for k, v in c.items():
                tokens[k] += v
                runs_with[k] += v > 0
                if v and k not in examples:
                    examples[k] = model.decode(seq[ids.shape[1]:], keep_image_tokens=True)
    return SamplingRegime(mode, runs, new, runs_with, tokens, examples)
