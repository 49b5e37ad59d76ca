"""Look inside a SeedX run: capture activations under stable names.

::

    import seedx_lab
    with seedx_lab.trace(model, capture=["llm.layers.*", "output_resampler.attn"]) as t:
        result = model.generate_image("a red circle")
    t["llm.layers.3.hidden"]          # [1, prompt + 65, llm_dim]: every position, prompt and generated
    t.keys(), t.nbytes

``trace`` works around any call on a :class:`~seedx_lab.model.SeedX` (``forward``, ``generate``,
``generate_image``, ``describe``, ``draw``) and also around a bare ``ContinuousLVLM``,
``VisionTransformer`` or ``Detokenizer``: it finds the stages by type among ``model.modules()``.
The module itself is callable (``seedx_lab.trace(...)`` is :func:`trace`) and also holds
:func:`estimate_bytes` / :func:`estimate_shapes`.

Names (``{i}`` a layer, ``{l}`` a Perceiver layer, ``{k}`` a diffusion step)
-----------------------------------------------------------------------------
Vision encoder (``model.vit``), one entry per image view:

=================================  ===========================  ========================================
``vit.embed``                      [views, N, width]            patch embeddings after ``ln_pre``
``vit.blocks.{i}``                 [views, N, width]            residual stream after block i
``vit.attn_pool.attn``             [views, heads, 256, N]       attention-pool weights (rows sum to 1)
``vit.attn_pool.out``              [views, 256, out_dim]        attention pool, before ``ln_post``/``proj``
``vit.out``                        [views, 256, out_dim]        the ViT's output features
``input_resampler.attn``           [views, heads, 64, 256]      where each of the 64 queries looks
``input_resampler.out``            [views, 64, llm_dim]         (before the tile-position term)
``output_resampler.attn``          [images, heads, 64, 64]      over the 64 image-token hidden states
``output_resampler.out``           [images, 64, vit_dim]        the features handed to the de-tokenizer
=================================  ===========================  ========================================

Language model (``model.lvlm.llm``), every position of the sequence as fed:

=================================  ===========================  ========================================
``llm.token_ids``                  [batch, positions]           the ids at those positions (int64)
``llm.embed``                      [batch, positions, dim]      the input embeddings the layers read
                                                                (image embeddings already written in)
``llm.layers.{i}.hidden``          [batch, positions, dim]      output of decoder layer i (before the
                                                                final norm, also for the last layer)
``llm.final``                      [batch, positions, dim]      after the final norm: what ``lm_head``
                                                                reads, SEED-X's "last-layer hidden state"
``llm.layers.{i}.attn``            [batch, heads, positions,    self-attention weights of layer i, on
                                   positions]                   request only (see below)
=================================  ===========================  ========================================

``llm.layers.{i}.attn`` is left out of ``capture=None`` and of patterns that do not contain ``attn``
(``"llm.layers.*"`` keeps meaning the hidden states): ask for it, e.g. ``capture=["llm.layers.*.attn"]``.
While it is captured the LLM runs its eager attention (the fused kernels return no weights); the
implementation it had is restored on exit. In a decoding loop each pass sees more keys: the pieces are
padded with zeros on the keys not yet there and joined along the queries.

``transformers``' ``output_hidden_states`` holds ``embed, layers.0 … layers.{L-2}, final``: its last
entry is already normed, so ``llm.layers.{L-1}.hidden`` is the one state it does not show.
A KV-cache decoding loop feeds one or a few tokens per forward pass; the pieces are concatenated
along the sequence, so a ``generate`` run gives ``[batch, prompt + new, dim]``, aligned with
``llm.token_ids`` (in a ragged batch the padding slots are included, with the pad id). A forward
pass with an empty cache starts a new *run* (see "repeated calls" below).

De-tokenizer (``model.detok``):

=================================  ===========================  ========================================
``detok.resampler.attn.{l}``       [B, heads, 64, N + 64]       Perceiver layer l (keys = inputs, latents)
``detok.resampler.latents``        [B, 64, dim]                 normed latents before the UNet heads
``detok.resampler.pool_attn``      [B, heads, 1, 65]            pooled ``text_embeds`` token's weights
``detok.step.{k}.latents``         [B, C, h, w]                 latents after diffusion step k
``detok.step.{k}.noise_pred``      [B, C, h, w]                 (guided) noise prediction of step k
``detok.step.{k}.timestep``        []                           the timestep of step k
=================================  ===========================  ========================================

``detok.step.{k}.pred_original_sample`` ``[B, C, h, w]`` is the scheduler's estimate of the clean latents at
step k. The ``detok.step`` entries are what the de-tokenizer's step callbacks receive (diffusers'
``callback_on_step_end`` pattern): while the trace is active it watches ``Detokenizer.sample`` through
``detok.watching_steps``, so the steps are captured whether or not the caller passes a callback of its own,
and nothing of the scheduler is replaced. A denoising loop written outside ``Detokenizer.sample`` is not seen. With guidance (``guidance_scale > 1``) the de-tokenizer's
resampler runs twice per image, conditional first, then on the negative (zero) features.

Generation:

``processor.decisions``: list of dicts, one per (decoding step, row) decision of every
``AutoImageTokenGenerationProcessor`` used by ``ContinuousLVLM.generate``:
``step, row, state ("outside"/"inside"/"closing"), block_index, forced_id, overridden_score,
p_boi`` (P(``<img>``) before processing) and ``call`` (which generate call inside this trace).
Capturing it does not slow generation down: on the fast path (one pass per forced block),
``generate`` shows each recording processor the logits that predicted every forced token, so a
single-row run records the same decisions, step numbers included, as the step-by-step path
(``generate(..., fast_forced_block=False)``). The
processor's ``record`` flag is switched on for the call and restored on exit; decisions the
trace caused are removed again from a processor that was not recording.

Repeated calls
--------------
Each name collects one entry per call (per *run* for ``llm.*``). ``t[name]`` concatenates them along
dim 0 (0-d entries are stacked) when their other dims agree, and returns the list of entries
otherwise. ``t.pieces(name)`` gives the raw pieces: one list per call/run, one tensor per forward.

Filters and memory
------------------
``capture``: glob patterns (``fnmatch``, case-sensitive) over the names; default everything. A pattern
that can match no name of this model is an error (typos are not silent). ``layers``: LLM / ViT layer
indices to keep (negative counts from the end) for ``vit.blocks.{i}`` and ``llm.layers.{i}.hidden``.
Copies are detached and stored on CPU (``to_cpu=True``) in ``dtype`` (floating tensors only).
``max_bytes``: the trace raises :class:`TraceMemoryError` (a ``MemoryError``) as soon as the stored
tensors would exceed it, and refuses up front when ``expect=dict(seq_len=..., ...)`` is given and
:func:`estimate_bytes` for it is above the limit. Processor decisions are not counted.

Hooks are always removed on exit, also when the body raises; traces nest (each one captures).

Edits
-----
``edits={name or glob: edit}`` changes values during the run, at the same hook points that capture reads
(so a capture of an edited name sees the edited value). An edit is a function ``(value, ctx) -> value``
(same shape; ``ctx`` an :class:`EditContext` with the name, the absolute positions of the value's position
dim and the KV-cache length) or a helper: :func:`replace`, :func:`add`, :func:`scale`, :func:`zero`,
:func:`patch_from` (another run's capture at the same absolute positions), each with optional
``positions=`` (absolute; negative ones count from the end of the current pass) and ``rows=``; a list
applies several in order. LLM positions are absolute sequence positions, so an edit at position ``p``
acts in the prompt pass, at a decoding step, or inside a forced image block, wherever ``p`` is fed.
``llm.layers.{i}.attn`` takes :func:`knockout` only: it blocks attention from query positions to key
positions by editing the attention mask. ``llm.token_ids``, ``processor.decisions`` and ``detok.step.*``
cannot be edited. Unknown names get the same "did you mean" errors as ``capture``.

One table, :data:`HOOK_POINTS`, lists every hook point (name pattern, stage, where it is hooked, the
shape it holds and how :func:`estimate_shapes` sizes it); capture, edits, :func:`names` and the
estimates all read it.
"""
from __future__ import annotations

import difflib
import re
import sys
import types
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn as nn

__all__ = ["Trace", "TraceMemoryError", "trace", "names", "estimate_shapes", "estimate_bytes", "HOOK_POINTS",
           "HookPoint", "EditContext", "Edit", "replace", "add", "scale", "zero", "patch_from", "knockout"]

MAX_STEPS = 1000        # diffusion step indices considered when checking patterns


class TraceMemoryError(MemoryError):
    """A trace's capture would exceed its ``max_bytes``."""


# --------------------------------------------------------------------------- finding the stages

class _Stages:
    """The stage modules of a model, found by type (any of them may be None)."""

    def __init__(self, model: nn.Module):
        from ..detokenizer import Detokenizer
        from ..lvlm import ContinuousLVLM
        from ..vit import VisionTransformer

        if not isinstance(model, nn.Module):
            raise TypeError(f"trace needs a torch.nn.Module (e.g. a SeedX), got {type(model).__name__}")
        self.model = model
        self.vit = self.lvlm = self.detok = None
        for m in model.modules():
            if self.vit is None and isinstance(m, VisionTransformer):
                self.vit = m
            elif self.lvlm is None and isinstance(m, ContinuousLVLM):
                self.lvlm = m
            elif self.detok is None and isinstance(m, Detokenizer):
                self.detok = m
            if self.vit is not None and self.lvlm is not None and self.detok is not None:
                break                      # all found: no need to walk the de-tokenizer's UNet and VAE
        self.llm = self.lvlm.llm if self.lvlm is not None else None
        self.decoder = None
        if self.llm is not None:
            self.decoder = getattr(self.llm, "model", None)
            if self.decoder is None:
                self.decoder = self.llm.get_decoder()

    @property
    def n_llm_layers(self) -> int:
        return len(self.decoder.layers) if self.decoder is not None else 0

    @property
    def n_vit_layers(self) -> int:
        return len(self.vit.blocks) if self.vit is not None else 0

    @property
    def n_detok_layers(self) -> int:
        return len(self.detok.resampler.layers) if self.detok is not None else 0


# --------------------------------------------------------------------------- the registry of hook points

class _Sizes(NamedTuple):
    """Sizes of a run, as :func:`estimate_shapes` takes them (``calls``: de-tokenizer resampler calls)."""
    seq_len: int
    batch: int
    views: int
    images: int
    calls: int
    steps: int


@dataclass(frozen=True)
class HookPoint:
    """One row of :data:`HOOK_POINTS`: a family of names and everything ``trace`` knows about it.

    ``pattern``: the name with ``{i}`` (layer), ``{l}`` (Perceiver layer) or ``{k}`` (diffusion step);
    ``stage``: ``"vit"``, ``"lvlm"`` or ``"detok"`` (the stage that must be present); ``shape``: the
    shape in words; ``count(st)``: how many indices (None: no index); ``module(st, idx)``: the module
    hooked; ``how``: ``"out"`` (forward hook, the value is ``pick(output)``), ``"pre"`` (forward pre-hook,
    the value is the first input), ``"attn"`` (the LLM's attention module: weights captured from its
    output, edits act on its mask) or ``"special"`` (installed by its own code); ``estimate(st, sizes)``:
    the shape a run of those sizes stores (None when that stage does not run). ``seq_dim``: the dim along
    which the pieces of a KV-cache decoding loop are joined (None: not an LLM sequence).
    ``on_request``: left out of ``capture=None`` and of patterns that do not name ``attn``.
    """

    pattern: str
    stage: str
    shape: str
    count: Callable[[Any], int] | None
    module: Callable[[Any, int | None], nn.Module] | None
    how: str
    estimate: Callable[[Any, _Sizes], tuple | None]
    seq_dim: int | None = None
    editable: bool = True
    on_request: bool = False
    pick: Callable = staticmethod(lambda out: out)
    dtype: torch.dtype | None = None           # a fixed storage dtype (None: the trace's)

    @property
    def regex(self) -> re.Pattern:
        return re.compile("^" + re.sub(r"\\\{[ilk]\\\}", r"(\\d+)", re.escape(self.pattern)) + "$")

    def expand(self, st, steps: int = 0) -> list[str]:
        if self.count is None:
            return [self.pattern]
        n = steps if "{k}" in self.pattern else self.count(st)
        key = re.search(r"\{([ilk])\}", self.pattern).group(1)
        return [self.pattern.replace("{%s}" % key, str(j)) for j in range(n)]


def _vit_n(st) -> int:
    c, cfg = st.vit.config, getattr(st.model, "config", None)
    tile = getattr(cfg, "tile_size", c.image_size)
    return (tile // c.patch_size) ** 2


def _if(n, shape):
    return tuple(int(s) for s in shape) if n else None


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


def _last_hidden(out):
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else _first(out)


def _llm_d(st) -> int:
    return st.llm.config.hidden_size


def _llm_heads(st) -> int:
    return st.llm.config.num_attention_heads


_R_IN = lambda st: st.lvlm.input_resampler.config         # noqa: E731
_R_OUT = lambda st: st.lvlm.output_resampler.config       # noqa: E731
_DC = lambda st: st.detok.config                          # noqa: E731


def _detok_n_in(st) -> int:
    return st.lvlm.output_resampler.config.num_queries if st.lvlm is not None else st.detok.config.num_queries


def _latent(st, s):
    return _if(s.images, (s.images, st.detok.unet.config.in_channels, _DC(st).latent_size, _DC(st).latent_size))


#: Every name ``trace`` knows, in the order :func:`names` lists them. Capture, edits, :func:`names`
#: and :func:`estimate_shapes` all read this table.
HOOK_POINTS: tuple[HookPoint, ...] = (
    HookPoint("vit.embed", "vit", "[views, N, width]", None, lambda st, i: st.vit.hook_embed, "out",
              lambda st, s: _if(s.views, (s.views, _vit_n(st), st.vit.config.width))),
    HookPoint("vit.blocks.{i}", "vit", "[views, N, width]", lambda st: st.n_vit_layers,
              lambda st, i: st.vit.blocks[i].hook_resid_post, "out",
              lambda st, s: _if(s.views, (s.views, _vit_n(st), st.vit.config.width))),
    HookPoint("vit.attn_pool.attn", "vit", "[views, heads, 256, N]", None,
              lambda st, i: st.vit.attn_pool.hook_attn, "out",
              lambda st, s: _if(s.views, (s.views, st.vit.config.pool_heads, st.vit.config.n_queries, _vit_n(st)))),
    HookPoint("vit.attn_pool.out", "vit", "[views, 256, out_dim]", None, lambda st, i: st.vit.attn_pool.hook_out,
              "out", lambda st, s: _if(s.views, (s.views, st.vit.config.n_queries, st.vit.config.output_dim))),
    HookPoint("vit.out", "vit", "[views, 256, out_dim]", None, lambda st, i: st.vit.hook_out, "out",
              lambda st, s: _if(s.views, (s.views, st.vit.config.n_queries, st.vit.config.output_dim))),
    HookPoint("input_resampler.attn", "lvlm", "[views, heads, 64, 256]", None,
              lambda st, i: st.lvlm.input_resampler.hook_attn, "out",
              lambda st, s: _if(s.views, (s.views, _R_IN(st).num_heads, _R_IN(st).num_queries,
                                          st.vit.config.n_queries if st.vit is not None else 256))),
    HookPoint("input_resampler.out", "lvlm", "[views, 64, llm_dim]", None,
              lambda st, i: st.lvlm.input_resampler.hook_out, "out",
              lambda st, s: _if(s.views, (s.views, _R_IN(st).num_queries, _R_IN(st).embed_dim))),
    HookPoint("llm.token_ids", "lvlm", "[batch, positions] int64", None, None, "special",
              lambda st, s: _if(s.seq_len, (s.batch, s.seq_len)), seq_dim=1, editable=False, dtype=torch.int64),
    HookPoint("llm.embed", "lvlm", "[batch, positions, dim]", None, lambda st, i: st.decoder.layers[0], "pre",
              lambda st, s: _if(s.seq_len, (s.batch, s.seq_len, _llm_d(st))), seq_dim=1),
    HookPoint("llm.layers.{i}.hidden", "lvlm", "[batch, positions, dim]", lambda st: st.n_llm_layers,
              lambda st, i: st.decoder.layers[i], "out",
              lambda st, s: _if(s.seq_len, (s.batch, s.seq_len, _llm_d(st))), seq_dim=1, pick=_first),
    HookPoint("llm.layers.{i}.attn", "lvlm", "[batch, heads, positions, positions]", lambda st: st.n_llm_layers,
              lambda st, i: st.decoder.layers[i].self_attn, "attn",
              lambda st, s: _if(s.seq_len, (s.batch, _llm_heads(st), s.seq_len, s.seq_len)), seq_dim=2,
              on_request=True, pick=lambda out: out[1]),
    HookPoint("llm.final", "lvlm", "[batch, positions, dim]", None, lambda st, i: st.decoder, "out",
              lambda st, s: _if(s.seq_len, (s.batch, s.seq_len, _llm_d(st))), seq_dim=1, pick=_last_hidden),
    HookPoint("output_resampler.attn", "lvlm", "[images, heads, 64, 64]", None,
              lambda st, i: st.lvlm.output_resampler.hook_attn, "out",
              lambda st, s: _if(s.images, (s.images, _R_OUT(st).num_heads, _R_OUT(st).num_queries,
                                           _R_IN(st).num_queries))),
    HookPoint("output_resampler.out", "lvlm", "[images, 64, vit_dim]", None,
              lambda st, i: st.lvlm.output_resampler.hook_out, "out",
              lambda st, s: _if(s.images, (s.images, _R_OUT(st).num_queries, _R_OUT(st).embed_dim))),
    HookPoint("processor.decisions", "lvlm", "list of dicts", None, None, "special",
              lambda st, s: None, editable=False),
    HookPoint("detok.resampler.attn.{l}", "detok", "[B, heads, 64, N + 64]", lambda st: st.n_detok_layers,
              lambda st, l: st.detok.resampler.layers[l][0].hook_attn, "out",
              lambda st, s: _if(s.calls, (s.calls, _DC(st).heads, _DC(st).num_queries,
                                          _detok_n_in(st) + _DC(st).num_queries))),
    HookPoint("detok.resampler.latents", "detok", "[B, 64, dim]", None,
              lambda st, i: st.detok.resampler.hook_latents, "out",
              lambda st, s: _if(s.calls, (s.calls, _DC(st).num_queries, _DC(st).dim))),
    HookPoint("detok.resampler.pool_attn", "detok", "[B, heads, 1, 65]", None,
              lambda st, i: st.detok.resampler.unet_attnpool.hook_attn, "out",
              lambda st, s: _if(s.calls, (s.calls, _DC(st).heads, 1, _DC(st).num_queries + 1))),
    HookPoint("detok.step.{k}.latents", "detok", "[B, C, h, w]", lambda st: 0, None, "special", _latent,
              editable=False),
    HookPoint("detok.step.{k}.noise_pred", "detok", "[B, C, h, w]", lambda st: 0, None, "special", _latent,
              editable=False),
    HookPoint("detok.step.{k}.timestep", "detok", "[]", lambda st: 0, None, "special",
              lambda st, s: _if(s.images, () if s.images == 1 else (s.images,)), editable=False,
              dtype=torch.float32),
    HookPoint("detok.step.{k}.pred_original_sample", "detok", "[B, C, h, w]", lambda st: 0, None, "special",
              _latent, editable=False),
)
_STEP_POINTS = [hp for hp in HOOK_POINTS if "{k}" in hp.pattern]
_LAYER_NAME = re.compile(r"^(vit\.blocks|llm\.layers)\.(\d+)(\.hidden|\.attn)?$")
_ON_REQUEST = re.compile("|".join(hp.regex.pattern for hp in HOOK_POINTS if hp.on_request))


def _present(st, hp: HookPoint) -> bool:
    return getattr(st, hp.stage) is not None


def _all_names(st: _Stages, steps: int = MAX_STEPS) -> list[str]:
    out: list[str] = []
    for hp in HOOK_POINTS:
        if _present(st, hp) and "{k}" not in hp.pattern:
            out += hp.expand(st)
    if st.detok is not None:                          # diffusion steps last, step by step
        out += [hp.pattern.replace("{k}", str(k)) for k in range(steps) for hp in _STEP_POINTS]
    return out


def hook_point(name: str) -> tuple[HookPoint, int | None]:
    """The registry row of a concrete ``name`` and its index (``KeyError`` if none)."""
    for hp in HOOK_POINTS:
        m = hp.regex.match(name)
        if m:
            return hp, (int(m.group(1)) if m.groups() else None)
    raise KeyError(name)


def names(model: nn.Module, steps: int | None = None) -> list[str]:
    """Every name a trace of ``model`` can capture (``detok.step.*`` for ``steps`` steps, default the
    model's ``num_inference_steps``)."""
    st = _Stages(model)
    return _all_names(st, _default_steps(st) if steps is None else steps)


def _default_steps(st: _Stages) -> int:
    cfg = getattr(st.model, "config", None)
    if hasattr(cfg, "num_inference_steps"):
        return int(cfg.num_inference_steps)
    return int(st.detok.config.num_inference_steps) if st.detok is not None else 0


class _Filter:
    """Which names to keep: glob patterns plus a set of layer indices per stack."""

    def __init__(self, st: _Stages, capture, layers):
        if isinstance(capture, str):
            capture = [capture]
        self.patterns = None if capture is None else list(capture)
        if self.patterns is not None:
            if not all(isinstance(p, str) for p in self.patterns):
                raise TypeError(f"capture must be a list of glob patterns (str), got {capture!r}")
            short, everything = _all_names(st, 0), None          # first without the 3,000 diffusion-step names
            for p in self.patterns:
                if any(fnmatchcase(n, p) for n in short):
                    continue
                everything = everything or _all_names(st)
                if not any(fnmatchcase(n, p) for n in everything):
                    close = difflib.get_close_matches(p, sorted(set(re.sub(r"\.\d+", ".*", n) for n in everything)), 3, 0.5)
                    hint = f"; did you mean {', '.join(close)}?" if close else ""
                    raise ValueError(f"capture pattern {p!r} matches no name this model can capture{hint} "
                                     "(see seedx_lab.trace.names(model))")
        self.keep = {"vit.blocks": None, "llm.layers": None}
        if layers is not None:
            layers = [int(i) for i in layers]
            n = {"vit.blocks": st.n_vit_layers, "llm.layers": st.n_llm_layers}
            for i in layers:
                if not any(-k <= i < k for k in n.values()):
                    raise ValueError(f"layer index {i} is out of range: the LLM has {n['llm.layers']} layers, "
                                     f"the ViT {n['vit.blocks']}")
            self.keep = {s: {i % k for i in layers if -k <= i < k} for s, k in n.items()}
        self._cache: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        hit = self._cache.get(name)
        if hit is None:
            if _ON_REQUEST.match(name):      # only a pattern that names attention asks for it
                hit = self.patterns is not None and any(fnmatchcase(name, p) and "attn" in p for p in self.patterns)
            else:
                hit = self.patterns is None or any(fnmatchcase(name, p) for p in self.patterns)
            m = _LAYER_NAME.match(name)
            if hit and m and self.keep[m.group(1)] is not None:
                hit = int(m.group(2)) in self.keep[m.group(1)]
            self._cache[name] = hit
        return hit

    def may_match(self, prefix: str) -> bool:
        """False when no name that starts with ``prefix`` can pass: a matching name starts with both
        ``prefix`` and a pattern's literal head (the text before its first ``*``, ``?`` or ``[``), so
        one of the two must start with the other. A cheap test before scanning many names."""
        if self.patterns is None:
            return True
        heads = (re.split(r"[*?\[]", p, maxsplit=1)[0] for p in self.patterns)
        return any(h.startswith(prefix) or prefix.startswith(h) for h in heads)


# --------------------------------------------------------------------------- the trace

def _past_length(kwargs: dict) -> int:
    """Tokens already in the KV cache handed to a decoder layer (0: a fresh sequence)."""
    for key in ("cache", "past_key_values", "past_key_value"):
        cache = kwargs.get(key)
        if cache is not None and hasattr(cache, "get_seq_length"):
            return int(cache.get_seq_length())
    return 0



class Trace:
    """A cache of named activations; use through :func:`trace` as a context manager.

    Mapping-like: ``t[name]``, ``name in t``, ``t.keys()``, ``t.items()``, ``len(t)``; ``t.nbytes`` is
    the size of the stored tensors. The data stays readable after the ``with`` block.
    """

    def __init__(self, model: nn.Module, capture: Sequence[str] | str | None = None,
                 layers: Iterable[int] | None = None, to_cpu: bool = True, dtype: torch.dtype | None = None,
                 max_bytes: int | None = None, expect: dict | None = None, edits: dict | None = None):
        self._st = _Stages(model)
        self.wanted = _Filter(self._st, capture, layers)
        self.edits = _Edits(self._st, edits)
        self.to_cpu, self.dtype = bool(to_cpu), dtype
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype or None, got {dtype!r}")
        from ..validate import byte_limit

        # a positive finite number or None: NaN would switch the limit off silently (every comparison False)
        byte_limit("max_bytes", max_bytes)
        self.max_bytes = max_bytes
        self.expect = dict(expect) if expect is not None else None
        if self.expect is not None:
            bad = set(self.expect) - {"seq_len", "batch", "views", "images", "steps", "guidance_scale"}
            if bad:
                raise ValueError(f"expect has unknown key(s) {sorted(bad)}; see estimate_bytes")
        self._data: dict[str, list[list[torch.Tensor]]] = {}      # name -> runs/calls -> pieces
        self._joined: dict[str, Any] = {}
        self._nbytes = 0
        self._handles: list = []
        self._undo: list = []              # callables run on exit, last first
        self._active = False
        self._used = False
        self._llm_continues = False        # the current LLM forward extends the previous one's cache
        self._llm_past = 0                 # tokens in the KV cache before the current LLM forward
        self._eager_on = False
        self._seq_dims: dict[str, int] = {}
        self._pending_ids: torch.Tensor | None = None
        self._processors: list[list] = []  # [processor, start, end or None, call, was_recording, copy]
        self._generate_calls = 0

    # ------------------------------------------------------------ context manager
    def __enter__(self) -> "Trace":
        if self._active:
            raise RuntimeError("this trace is already active; nest a new seedx_lab.trace(...) instead")
        if self._used:
            raise RuntimeError("a trace can be entered once; make a new one for another capture")
        if self.max_bytes is not None and self.expect is not None:
            est = estimate_bytes(self._st.model, capture=self.wanted.patterns, layers=None, dtype=self.dtype,
                                 _filter=self.wanted, **self.expect)
            if est > self.max_bytes:
                raise TraceMemoryError(f"refusing to trace: the estimated capture is {est} bytes ({_human(est)}) "
                                       f"for {self.expect}, above max_bytes={self.max_bytes} ({_human(self.max_bytes)}); "
                                       "narrow capture=/layers=, store a smaller dtype= or raise max_bytes")
        self._used = self._active = True
        try:
            self._install()
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> bool:
        self._remove()
        return False

    def _remove(self) -> None:
        self._active = False
        for h in self._handles:
            h.remove()
        self._handles.clear()
        while self._undo:
            self._undo.pop()()
        self._pending_ids = None

    # ------------------------------------------------------------ hooks
    def _install(self) -> None:
        st, w, ed = self._st, self.wanted, self.edits
        if st.lvlm is not None:
            self._install_llm_start()
        for hp in HOOK_POINTS:
            if hp.how == "special" or not _present(st, hp):
                continue
            for name in hp.expand(st):
                keep, fns = w(name), ed(name)
                if not keep and not fns:
                    continue
                idx = hook_point(name)[1]
                module = hp.module(st, idx)
                if hp.how == "attn":
                    self._hook_attn(module, name, idx, keep, fns)
                else:
                    self._hook_value(module, name, hp, idx, keep, fns)
        if st.lvlm is not None and w("processor.decisions"):
            lv = st.lvlm
            if not hasattr(lv, "generation_observers"):
                lv.generation_observers = []
            lv.generation_observers.append(self)
            self._undo.append(lambda: _remove_by_identity(lv.generation_observers, self))
            self._undo.append(self._close_processors)
        if st.detok is not None and w.may_match("detok.step.") and any(
                w(hp.pattern.replace("{k}", str(k))) for k in range(MAX_STEPS) for hp in _STEP_POINTS):
            self._watch_steps(st.detok)

    def _context(self, name: str, hp: HookPoint, idx, value) -> EditContext:
        if hp.seq_dim is not None:
            q = value.shape[hp.seq_dim]
            return EditContext(name, torch.arange(self._llm_past, self._llm_past + q, device=value.device),
                               self._llm_past, idx)
        pos = torch.arange(value.shape[1], device=value.device) if value.dim() > 1 else None
        return EditContext(name, pos, 0, idx)

    def _apply(self, name, hp, idx, value, fns):
        for fn in fns:
            new = fn(value, self._context(name, hp, idx, value))
            if not torch.is_tensor(new) or new.shape != value.shape:
                raise ValueError(f"the edit {fn!r} of {name!r} must return a tensor of shape {tuple(value.shape)}, "
                                 f"got {tuple(new.shape) if torch.is_tensor(new) else type(new).__name__}")
            value = new
        return value

    def _hook_value(self, module: nn.Module, name: str, hp: HookPoint, idx, keep: bool, fns: list) -> None:
        """One hook per name: apply its edits (in order), then store the (edited) value."""
        seq = hp.seq_dim is not None
        if hp.how == "pre":
            def pre(mod, args, kwargs):
                if not self._active:
                    return None
                value = args[0] if args else kwargs["hidden_states"]
                if fns:
                    value = self._apply(name, hp, idx, value, fns)
                    if args:
                        args = (value, *args[1:])
                    else:
                        kwargs = {**kwargs, "hidden_states": value}
                if keep:
                    self._record(name, value, seq=seq)
                return (args, kwargs) if fns else None
            self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
            return

        def hook(mod, args, out):
            if not self._active:
                return None
            value = hp.pick(out)
            if fns:
                value = self._apply(name, hp, idx, value, fns)
                out = _put(out, value)
            if keep:
                self._record(name, value, seq=seq)
            return out if fns else None
        self._handles.append(module.register_forward_hook(hook))

    def _hook_attn(self, module: nn.Module, name: str, idx: int, keep: bool, knockouts: list) -> None:
        """LLM attention: knockouts rewrite the mask the module is given; capture reads its weights,
        which the eager implementation returns (switched on for the trace, see ``_eager``)."""
        if knockouts:
            def pre(mod, args, kwargs):
                if not self._active:
                    return None
                h = args[0] if args else kwargs["hidden_states"]
                mask = kwargs.get("attention_mask")
                for ko in knockouts:
                    mask = ko.mask(mask, h.shape[1], self._llm_past, h.shape[0], h.device)
                return args, {**kwargs, "attention_mask": mask}
            self._handles.append(module.register_forward_pre_hook(pre, with_kwargs=True))
        if keep:
            self._eager()

            def hook(mod, args, out):
                if self._active:
                    self._record(name, out[1], seq=True, seq_dim=2)
            self._handles.append(module.register_forward_hook(hook))

    def _eager(self) -> None:
        """Switch the LLM to eager attention (the one that returns its weights) until exit."""
        if self._eager_on:
            return
        self._eager_on = True
        configs = {id(m.config): m.config for m in self._st.llm.modules() if hasattr(m, "config")
                   and hasattr(m.config, "_attn_implementation_internal")}
        before = {k: c._attn_implementation_internal for k, c in configs.items()}
        for c in configs.values():
            c._attn_implementation_internal = "eager"

        def undo():
            for k, c in configs.items():
                c._attn_implementation_internal = before[k]
        self._undo.append(undo)

    def _install_llm_start(self) -> None:
        """Layer 0's pre-hook sees every LLM forward pass first: is it a new run or a continuation of the
        KV cache (and how many tokens are cached), and which ids were fed."""
        st, w = self._st, self.wanted
        dec = st.decoder
        llm_names = [n for n in _all_names(st, 0) if n.startswith("llm.")]
        if not any(w(n) or self.edits(n) for n in llm_names):
            return
        if w("llm.token_ids"):
            def ids_hook(mod, args, out):
                if self._active and args:
                    self._pending_ids = args[0]
            self._handles.append(st.llm.get_input_embeddings().register_forward_hook(ids_hook))

        def start(mod, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self._llm_past = _past_length(kwargs)
            self._llm_continues = self._llm_past > 0
            if w("llm.token_ids"):
                ids = self._pending_ids
                if ids is None or tuple(ids.shape) != tuple(hidden.shape[:2]):
                    ids = torch.full(hidden.shape[:2], -1, dtype=torch.long, device=hidden.device)   # unknown
                self._record("llm.token_ids", ids, seq=True)
            self._pending_ids = None

        self._handles.append(dec.layers[0].register_forward_pre_hook(start, with_kwargs=True))

    def _watch_steps(self, detok) -> None:
        """Register a step callback with the de-tokenizer (removed on exit) that records every step of
        ``Detokenizer.sample``: the latents after the step, the (guided) noise prediction, the timestep and
        the scheduler's ``pred_original_sample``."""
        def on_step(_detok, k, timestep, tensors):
            if self._active:
                self._record(f"detok.step.{k}.latents", tensors["latents"])
                self._record(f"detok.step.{k}.noise_pred", tensors["noise_pred"])
                self._record(f"detok.step.{k}.timestep", torch.as_tensor(timestep))
                self._record(f"detok.step.{k}.pred_original_sample", tensors["pred_original_sample"])

        detok.step_callbacks.append(on_step)
        self._undo.append(lambda: _remove_by_identity(detok.step_callbacks, on_step))

    # ------------------------------------------------------------ generation observer
    def on_generate(self, processors) -> None:
        """Called by ``ContinuousLVLM.generate`` with its processors before decoding starts."""
        if not self._active:
            return
        self._close_processors(final=False)
        for p in processors:
            if hasattr(p, "decisions") and hasattr(p, "record"):
                self._processors.append([p, len(p.decisions), None, self._generate_calls, bool(p.record), None])
                p.record = True
        self._generate_calls += 1
        self._joined.pop("processor.decisions", None)

    def _close_processors(self, final: bool = True) -> None:
        """Freeze each open entry's slice of decisions; on exit restore ``record`` and tidy up."""
        for entry in self._processors:
            p, start, end = entry[0], entry[1], entry[2]
            if end is None:
                entry[2] = end = len(p.decisions)
                entry[5] = list(p.decisions[start:end])
        if final:
            for p, start, end, _call, was_recording, _copy in reversed(self._processors):
                p.record = was_recording
                if not was_recording and len(p.decisions) == end:
                    del p.decisions[start:end]            # it was not recording: leave its list as it was
            self._joined.pop("processor.decisions", None)

    def _decisions(self) -> list[dict]:
        out = []
        for p, start, end, call, _w, copy in self._processors:
            ds = copy if copy is not None else p.decisions[start:]
            out += [dict(d.as_dict(), call=call) for d in ds]
        return out

    # ------------------------------------------------------------ storage
    def _copy(self, x) -> torch.Tensor:
        x = torch.as_tensor(x).detach()
        dtype = self.dtype if (self.dtype is not None and x.is_floating_point()) else x.dtype
        return x.to(device="cpu" if self.to_cpu else x.device, dtype=dtype, copy=True)

    def _record(self, name: str, x, seq: bool = False, seq_dim: int = 1) -> None:
        if not self._active or not self.wanted(name):
            return
        x = self._copy(x)
        nb = x.numel() * x.element_size()
        if self.max_bytes is not None and self._nbytes + nb > self.max_bytes:
            raise TraceMemoryError(f"trace capture exceeded max_bytes={self.max_bytes} ({_human(self.max_bytes)}): "
                                   f"{self._nbytes} bytes stored, {name!r} {tuple(x.shape)} needs {nb} more; "
                                   "narrow capture=/layers=, store a smaller dtype= or raise max_bytes")
        self._nbytes += nb
        runs = self._data.setdefault(name, [])
        if seq:
            self._seq_dims[name] = seq_dim
        if seq and self._llm_continues and runs:
            runs[-1].append(x)                 # the KV-cache loop continues this run
        else:
            runs.append([x])
        self._joined.pop(name, None)

    # ------------------------------------------------------------ reading
    def keys(self) -> list[str]:
        out = list(self._data)
        if self._processors:
            out.append("processor.decisions")
        return out

    def __iter__(self):
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, name) -> bool:
        return name in self._data or (name == "processor.decisions" and bool(self._processors))

    def __getitem__(self, name: str):
        if name not in self:
            close = difflib.get_close_matches(str(name), self.keys(), 3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise KeyError(f"{name!r} was not captured{hint} (captured: {len(self)} names, see t.keys())")
        if name in self._joined:
            return self._joined[name]
        if name == "processor.decisions":
            value = self._decisions()
        else:
            parts = [_join_run(run, self._seq_dims.get(name, 1)) for run in self._data[name]]
            value = _join(parts)
        self._joined[name] = value
        return value

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def values(self):
        return [self[k] for k in self.keys()]

    def pieces(self, name: str) -> list[list[torch.Tensor]]:
        """The raw pieces of ``name``: one list per call (per run for ``llm.*``), one tensor per forward."""
        if name not in self._data:
            raise KeyError(f"{name!r} was not captured")
        return [list(run) for run in self._data[name]]

    def shapes(self) -> dict[str, Any]:
        """``{name: shape}`` (a list of shapes where entries could not be joined; a count for decisions)."""
        out = {}
        for k in self.keys():
            v = self[k]
            if k == "processor.decisions":
                out[k] = len(v)
            elif isinstance(v, list):
                out[k] = [tuple(x.shape) for x in v]
            else:
                out[k] = tuple(v.shape)
        return out

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored tensors."""
        return self._nbytes

    def __repr__(self) -> str:
        state = "active" if self._active else "closed" if self._used else "not entered"
        return f"<seedx_lab.trace: {len(self)} names, {_human(self._nbytes)}, {state}>"


def _join_run(run: list[torch.Tensor], dim: int) -> torch.Tensor:
    """The pieces of one run (one per forward pass) along the positions. Attention pieces
    ``[B, h, q, k]`` of a decoding loop see more keys each time: the earlier ones are padded with zeros
    (those keys did not exist yet) so they join into ``[B, h, positions, positions]``."""
    if len(run) == 1:
        return run[0]
    if dim == 2:
        k = max(x.shape[-1] for x in run)
        run = [torch.nn.functional.pad(x, (0, k - x.shape[-1])) for x in run]
    return torch.cat(run, dim=dim)


def _put(out, value):
    """``out`` with its main value (what the hook point's ``pick`` read) replaced by ``value``."""
    if hasattr(out, "last_hidden_state"):
        out.last_hidden_state = value
        return out
    if isinstance(out, tuple):
        return (value, *out[1:])
    return value


def _join(parts: list[torch.Tensor]):
    if len(parts) == 1:
        return parts[0]
    if all(p.dim() == 0 for p in parts):
        return torch.stack(parts)
    if all(p.dim() > 0 and p.shape[1:] == parts[0].shape[1:] and p.dtype == parts[0].dtype for p in parts):
        return torch.cat(parts, dim=0)
    return parts


def _remove_by_identity(items: list, obj) -> None:
    for i, x in enumerate(items):
        if x is obj:
            del items[i]
            return


def _human(n: int | float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


# --------------------------------------------------------------------------- edits

@dataclass
class EditContext:
    """What an edit function is told besides the value.

    ``name``: the concrete name (e.g. ``llm.layers.2.hidden``); ``positions [q]``: the absolute position
    of each index of the value's position dim (dim 1; the query dim 2 for ``llm.layers.{i}.attn``) —
    for the LLM the sequence position, counting the tokens already in the KV cache, so a decoding
    step's single token has position ``prompt + steps so far``; for other names ``0..n-1``.
    ``past``: tokens already in the KV cache (0 outside the LLM). ``index``: the layer index or None.
    """

    name: str
    positions: torch.Tensor | None
    past: int = 0
    index: int | None = None


def _as_list(x) -> list[int] | None:
    if x is None:
        return None
    if torch.is_tensor(x):
        x = x.reshape(-1).tolist()
    elif isinstance(x, (int, np.integer)):
        x = [x]
    return [int(v) for v in x]


class Edit:
    """Base of the edit helpers: changes ``value[rows][:, positions]`` and leaves the rest alone.

    ``positions``: absolute positions (see :class:`EditContext`); a negative one counts from the end of
    what this forward pass feeds (``-1``: its last position, in a decoding loop each new token). None:
    all. ``rows``: batch rows (None: all). Positions this pass does not feed are skipped.
    Subclasses implement ``new(old, abs_positions, rows, ctx) -> tensor`` of ``old``'s shape.
    """

    def __init__(self, positions=None, rows=None):
        self.positions, self.rows = _as_list(positions), _as_list(rows)

    def _local(self, ctx: EditContext, n: int, device) -> torch.Tensor:
        if self.positions is None:
            return torch.arange(n, device=device)
        pos = ctx.positions.tolist() if ctx.positions is not None else list(range(n))
        where = {p: j for j, p in enumerate(pos)}
        out = []
        for p in self.positions:
            j = n + p if p < 0 else where.get(p)
            if j is not None and 0 <= j < n:
                out.append(j)
        return torch.tensor(sorted(set(out)), dtype=torch.long, device=device)

    def __call__(self, value: torch.Tensor, ctx: EditContext) -> torch.Tensor:
        if value.dim() < 2:
            raise ValueError(f"{type(self).__name__} needs a value with a position dim; {ctx.name} has shape "
                             f"{tuple(value.shape)}")
        sel = self._local(ctx, value.shape[1], value.device)
        if sel.numel() == 0:
            return value
        rows = torch.arange(value.shape[0], device=value.device) if self.rows is None else \
            torch.tensor(self.rows, dtype=torch.long, device=value.device)
        if rows.numel() and int(rows.max()) >= value.shape[0]:
            raise ValueError(f"rows={self.rows} but {ctx.name} has a batch of {value.shape[0]}")
        idx = (rows[:, None], sel[None, :])
        out = value.clone()
        absolute = ctx.positions[sel] if ctx.positions is not None else sel
        out[idx] = self.new(value[idx], absolute, rows, ctx).to(value.dtype)
        return out

    def new(self, old, positions, rows, ctx):          # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        extra = "" if self.positions is None else f", positions={self.positions}"
        extra += "" if self.rows is None else f", rows={self.rows}"
        return f"{type(self).__name__}({self._what()}{extra})"

    def _what(self) -> str:
        return ""


class _Replace(Edit):
    def __init__(self, value, positions=None, rows=None):
        super().__init__(positions, rows)
        self.value = torch.as_tensor(value)

    def new(self, old, positions, rows, ctx):
        return self.value.to(old.device, old.dtype).expand_as(old)

    def _what(self):
        return f"shape {tuple(self.value.shape)}"


class _Add(_Replace):
    def new(self, old, positions, rows, ctx):
        return old + self.value.to(old.device, old.dtype)


class _Scale(Edit):
    def __init__(self, factor: float, positions=None, rows=None):
        super().__init__(positions, rows)
        self.factor = float(factor)

    def new(self, old, positions, rows, ctx):
        return old * self.factor

    def _what(self):
        return f"{self.factor:g}"


class _Zero(Edit):
    def new(self, old, positions, rows, ctx):
        return torch.zeros_like(old)


class _PatchFrom(Edit):
    def __init__(self, source, positions=None, rows=None):
        super().__init__(positions, rows)
        if not (isinstance(source, Trace) or torch.is_tensor(source)):
            raise TypeError(f"patch_from needs a finished trace or a captured tensor, got {type(source).__name__}")
        self.source = source

    def new(self, old, positions, rows, ctx):
        src = self.source
        if isinstance(src, Trace):
            if ctx.name not in src:
                raise KeyError(f"patch_from: the source trace did not capture {ctx.name!r}")
            src = src[ctx.name]
            if isinstance(src, list):
                src = src[-1]                    # several runs of different lengths: the last one
        if src.dim() != old.dim() + 0 or src.shape[2:] != old.shape[2:]:
            raise ValueError(f"patch_from: source {tuple(src.shape)} does not fit {ctx.name} {tuple(old.shape)}")
        if int(positions.max()) >= src.shape[1]:
            raise ValueError(f"patch_from: {ctx.name} position {int(positions.max())} is beyond the source's "
                             f"{src.shape[1]} positions")
        src = src.to(old.device)
        if src.shape[0] == 1:
            return src[:, positions.to(src.device)].expand_as(old)
        if src.shape[0] <= int(rows.max()):
            raise ValueError(f"patch_from: source batch {src.shape[0]} has no row {int(rows.max())}")
        return src[rows[:, None], positions[None, :]]

    def _what(self):
        return "a trace" if isinstance(self.source, Trace) else f"shape {tuple(self.source.shape)}"


class Knockout(Edit):
    """Block attention from query ``positions`` to ``keys`` (absolute positions) in the LLM's attention
    (edit of ``llm.layers.{i}.attn``). A position's attention to itself is never blocked, so every
    softmax keeps a key. Default ``positions=[-1]``: the last position each pass feeds."""

    def __init__(self, keys, positions=(-1,), rows=None):
        super().__init__(positions, rows)
        self.keys = _as_list(keys) or []

    def mask(self, mask: torch.Tensor | None, q: int, past: int, batch: int, device) -> torch.Tensor | None:
        """The attention mask ``[B, 1, q, k]`` with the blocked entries off (bool) or at the dtype's min."""
        if not self.keys:
            return mask
        if mask is None:                      # sdpa's implicit causal mask, made explicit
            k = past + q
            mask = (torch.arange(k, device=device)[None, :] <= past + torch.arange(q, device=device)[:, None])
            mask = mask[None, None].expand(batch, 1, q, k)
        mask = mask.expand(batch, *mask.shape[1:]).clone()
        ctx = EditContext("", torch.arange(past, past + q, device=device), past)
        qs = self._local(ctx, q, device).tolist()
        rows = range(batch) if self.rows is None else self.rows
        k = mask.shape[-1]
        off = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
        for j in qs:
            keys = [p for p in self.keys if 0 <= p < k and p != past + j]
            if keys:
                for r in rows:
                    mask[r, :, j, keys] = off
        return mask

    def new(self, old, positions, rows, ctx):
        raise TypeError("knockout edits the attention mask: use it on llm.layers.{i}.attn")

    def _what(self):
        return f"keys={self.keys}"


def replace(value, positions=None, rows=None) -> Edit:
    """Edit: set the value (broadcast, e.g. a ``[dim]`` vector) at ``positions`` / ``rows``."""
    return _Replace(value, positions, rows)


def add(vector, positions=None, rows=None) -> Edit:
    """Edit: add ``vector`` (broadcast) at ``positions`` / ``rows``, e.g. a steering direction."""
    return _Add(vector, positions, rows)


def scale(factor: float, positions=None, rows=None) -> Edit:
    """Edit: multiply by ``factor`` at ``positions`` / ``rows``."""
    return _Scale(factor, positions, rows)


def zero(positions=None, rows=None) -> Edit:
    """Edit: set to zero at ``positions`` / ``rows``."""
    return _Zero(positions, rows)


def patch_from(source, positions=None, rows=None) -> Edit:
    """Edit: copy from another run at the same absolute positions. ``source``: a finished
    :class:`Trace` (read under the edited name, so one ``patch_from(t)`` can serve a glob of names) or
    a captured tensor ``[1 or batch, positions, ...]``."""
    return _PatchFrom(source, positions, rows)


def knockout(keys, positions=(-1,), rows=None) -> Knockout:
    """Edit of ``llm.layers.{i}.attn``: block attention from ``positions`` (default: the last one) to ``keys``."""
    return Knockout(keys, positions, rows)


class _Edits:
    """The ``edits=`` of a trace: ``{glob pattern: fn or Edit or list of them}``, checked against the names."""

    def __init__(self, st: _Stages, edits):
        self.items: list[tuple[str, list]] = []
        if edits is None:
            return
        if not isinstance(edits, dict):
            raise TypeError(f"edits must be a dict {{name or glob: edit}}, got {type(edits).__name__}")
        editable = [n for n in _all_names(st, 0) if hook_point(n)[0].editable]
        everything = _all_names(st, 0)
        for pattern, fns in edits.items():
            if not isinstance(pattern, str):
                raise TypeError(f"edits keys must be names or glob patterns (str), got {pattern!r}")
            fns = list(fns) if isinstance(fns, (list, tuple)) else [fns]
            for fn in fns:
                if not callable(fn):
                    raise TypeError(f"edit for {pattern!r} must be a function (value, ctx) -> value or an Edit "
                                    f"(replace, add, scale, zero, patch_from, knockout), got {type(fn).__name__}")
            hits = [n for n in editable if fnmatchcase(n, pattern)      # attention only when named, as in capture
                    and (not _ON_REQUEST.match(n) or "attn" in pattern)]
            if not hits:
                if any(fnmatchcase(n, pattern) for n in everything) or pattern.startswith("detok.step."):
                    raise ValueError(f"edits pattern {pattern!r} names only values that cannot be edited "
                                     "(llm.token_ids, processor.decisions, detok.step.*)")
                close = difflib.get_close_matches(pattern, sorted(set(re.sub(r"\.\d+", ".*", n) for n in editable)),
                                                  3, 0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(f"edits pattern {pattern!r} matches no name this model can edit{hint} "
                                 "(see seedx_lab.trace.names(model))")
            for n in hits:
                attn = hook_point(n)[0].how == "attn"
                for fn in fns:
                    if attn != isinstance(fn, Knockout):
                        raise TypeError(f"{n}: " + ("attention is edited through its mask: use knockout(keys=...)"
                                                    if attn else "knockout() edits llm.layers.{i}.attn only"))
            self.items.append((pattern, fns))

    def __call__(self, name: str) -> list:
        attn = bool(_ON_REQUEST.match(name))
        return [fn for p, fns in self.items if fnmatchcase(name, p) and (not attn or "attn" in p) for fn in fns]

    def __bool__(self) -> bool:
        return bool(self.items)


def trace(model: nn.Module, capture: Sequence[str] | str | None = None, layers: Iterable[int] | None = None,
          to_cpu: bool = True, dtype: torch.dtype | None = None, max_bytes: int | None = None,
          expect: dict | None = None, edits: dict | None = None) -> Trace:
    """Capture (and edit) named activations of ``model`` during a ``with`` block; see the module docstring.

    Args:
        capture: glob patterns over the names (default: every name).
        layers: LLM / ViT layer indices to keep (negative from the end).
        to_cpu, dtype: store detached copies on CPU / in this floating dtype.
        max_bytes: raise :class:`TraceMemoryError` once the stored tensors would exceed it.
        expect: sizes of the coming run for an up-front check against ``max_bytes``, the keyword
            arguments of :func:`estimate_bytes` (``seq_len``, ``batch``, ``views``, ``images``, ``steps``,
            ``guidance_scale``).
        edits: ``{name or glob: edit}`` applied during the run (see "Edits" in the module docstring);
            an edit is a function ``(value, ctx) -> value`` or a helper (:func:`replace`, :func:`add`,
            :func:`scale`, :func:`zero`, :func:`patch_from`, :func:`knockout`), or a list of them.
    """
    return Trace(model, capture, layers, to_cpu, dtype, max_bytes, expect, edits)


# --------------------------------------------------------------------------- estimates

def estimate_shapes(model: nn.Module, capture: Sequence[str] | str | None = None, layers: Iterable[int] | None = None,
                    seq_len: int = 0, batch: int = 1, views: int = 0, images: int = 0, steps: int | None = None,
                    guidance_scale: float | None = None, dtype: torch.dtype | None = None,
                    _filter: _Filter | None = None) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``{name: (shape, dtype)}`` a trace would hold for a run of the given sizes.

    ``seq_len``: LLM positions fed in total (prompt + generated) for each of ``batch`` rows;
    ``views``: image views through the ViT and input resampler (tiles + global views);
    ``images``: images generated (output resampler) and de-tokenized, one ``draw`` call each, with
    ``steps`` diffusion steps (default: the model's) and ``guidance_scale`` (default: the model's; above 1
    the de-tokenizer's resampler runs twice per image). ``dtype``: the trace's storage dtype (default
    the model's). A name whose stage does not run (size 0) is left out.
    """
    st = _Stages(model)
    w = _filter or _Filter(st, capture, layers)
    cfg = getattr(model, "config", None)
    steps = _default_steps(st) if steps is None else int(steps)
    if guidance_scale is None:
        guidance_scale = getattr(cfg, "guidance_scale", None)
        if guidance_scale is None and st.detok is not None:
            guidance_scale = st.detok.config.guidance_scale
    fdt = dtype or next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    shapes: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    calls = images * (2 if guidance_scale is not None and guidance_scale > 1.0 else 1)
    sizes = _Sizes(int(seq_len), int(batch), int(views), int(images), calls, steps)
    for hp in HOOK_POINTS:
        if not _present(st, hp):
            continue
        for name in (hp.expand(st) if "{k}" not in hp.pattern else hp.expand(st, steps)):
            if not w(name):
                continue
            shape = hp.estimate(st, sizes)
            if shape is not None and (len(shape) == 0 or shape[0] > 0):
                shapes[name] = (tuple(int(x) for x in shape), hp.dtype or fdt)
    return shapes


def estimate_bytes(model: nn.Module, capture: Sequence[str] | str | None = None, layers: Iterable[int] | None = None,
                   seq_len: int = 0, batch: int = 1, views: int = 0, images: int = 0, steps: int | None = None,
                   guidance_scale: float | None = None, dtype: torch.dtype | None = None,
                   _filter: _Filter | None = None) -> int:
    """Bytes a trace would store for a run of the given sizes (arguments as :func:`estimate_shapes`).

    E.g. text-to-image: ``seq_len = prompt tokens + 65``, ``images=1``; ``describe``: ``views`` = tiles + 1.
    """
    total = 0
    for shape, dt in estimate_shapes(model, capture, layers, seq_len, batch, views, images, steps,
                                     guidance_scale, dtype, _filter).values():
        n = 1
        for s in shape:
            n *= s
        total += n * torch.empty((), dtype=dt).element_size()
    return total


# ``seedx_lab.trace`` is this module; calling it calls :func:`trace`.
class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs) -> Trace:
        return trace(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
