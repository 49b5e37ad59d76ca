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
=================================  ===========================  ========================================

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

The ``detok.step`` entries are exactly what a ``Detokenizer.sample(callback=...)`` callback receives
as ``(k, timestep, latents, noise_pred)``, and they are captured whether or not the caller passes a
callback: while the trace is active, ``model.detok.scheduler.step`` and ``set_timesteps`` are wrapped
on the instance (removed on exit). With guidance (``guidance_scale > 1``) the de-tokenizer's
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
"""
from __future__ import annotations

import difflib
import re
import sys
import types
from fnmatch import fnmatchcase
from typing import Any, Iterable, Sequence

import torch
import torch.nn as nn

__all__ = ["Trace", "TraceMemoryError", "trace", "names", "estimate_shapes", "estimate_bytes"]

MAX_STEPS = 1000        # diffusion step indices considered when checking patterns
_LAYER_NAME = re.compile(r"^(vit\.blocks|llm\.layers)\.(\d+)(\.hidden)?$")


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


def _all_names(st: _Stages, steps: int = MAX_STEPS) -> list[str]:
    out: list[str] = []
    if st.vit is not None:
        out += ["vit.embed", *(f"vit.blocks.{i}" for i in range(st.n_vit_layers)),
                "vit.attn_pool.attn", "vit.attn_pool.out", "vit.out"]
    if st.lvlm is not None:
        out += ["input_resampler.attn", "input_resampler.out", "llm.token_ids", "llm.embed",
                *(f"llm.layers.{i}.hidden" for i in range(st.n_llm_layers)), "llm.final",
                "output_resampler.attn", "output_resampler.out", "processor.decisions"]
    if st.detok is not None:
        out += [*(f"detok.resampler.attn.{l}" for l in range(st.n_detok_layers)),
                "detok.resampler.latents", "detok.resampler.pool_attn"]
        out += [f"detok.step.{k}.{f}" for k in range(steps) for f in ("latents", "noise_pred", "timestep")]
    return out


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


def _first(x):
    return x[0] if isinstance(x, (tuple, list)) else x


class Trace:
    """A cache of named activations; use through :func:`trace` as a context manager.

    Mapping-like: ``t[name]``, ``name in t``, ``t.keys()``, ``t.items()``, ``len(t)``; ``t.nbytes`` is
    the size of the stored tensors. The data stays readable after the ``with`` block.
    """

    def __init__(self, model: nn.Module, capture: Sequence[str] | str | None = None,
                 layers: Iterable[int] | None = None, to_cpu: bool = True, dtype: torch.dtype | None = None,
                 max_bytes: int | None = None, expect: dict | None = None):
        self._st = _Stages(model)
        self.wanted = _Filter(self._st, capture, layers)
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
    def _hook(self, module: nn.Module, name: str, pick=lambda out: out) -> None:
        """Forward hook storing ``pick(output)`` under ``name`` (only if the name is wanted)."""
        if not self.wanted(name):
            return

        def hook(mod, args, out):
            self._record(name, pick(out))

        self._handles.append(module.register_forward_hook(hook))

    def _install(self) -> None:
        st, w = self._st, self.wanted
        if st.vit is not None:
            v = st.vit
            self._hook(v.hook_embed, "vit.embed")
            for i, blk in enumerate(v.blocks):
                self._hook(blk.hook_resid_post, f"vit.blocks.{i}")
            self._hook(v.attn_pool.hook_attn, "vit.attn_pool.attn")
            self._hook(v.attn_pool.hook_out, "vit.attn_pool.out")
            self._hook(v.hook_out, "vit.out")
        if st.lvlm is not None:
            lv = st.lvlm
            for which in ("input_resampler", "output_resampler"):
                r = getattr(lv, which)
                self._hook(r.hook_attn, f"{which}.attn")
                self._hook(r.hook_out, f"{which}.out")
            self._install_llm()
            if w("processor.decisions"):
                if not hasattr(lv, "generation_observers"):
                    lv.generation_observers = []
                lv.generation_observers.append(self)
                self._undo.append(lambda: _remove_by_identity(lv.generation_observers, self))
                self._undo.append(self._close_processors)
        if st.detok is not None:
            res = st.detok.resampler
            for l, (attn, _ff) in enumerate(res.layers):
                self._hook(attn.hook_attn, f"detok.resampler.attn.{l}")
            self._hook(res.hook_latents, "detok.resampler.latents")
            self._hook(res.unet_attnpool.hook_attn, "detok.resampler.pool_attn")
            if w.may_match("detok.step.") and any(w(f"detok.step.{k}.{f}") for k in range(MAX_STEPS)
                                                  for f in ("latents", "noise_pred", "timestep")):
                self._wrap_scheduler(st.detok)

    def _install_llm(self) -> None:
        st, w = self._st, self.wanted
        dec = st.decoder
        L = st.n_llm_layers
        llm_names = ["llm.token_ids", "llm.embed", "llm.final", *(f"llm.layers.{i}.hidden" for i in range(L))]
        if not any(w(n) for n in llm_names):
            return
        if w("llm.token_ids"):
            def ids_hook(mod, args, out):
                if self._active and args:
                    self._pending_ids = args[0]
            self._handles.append(st.llm.get_input_embeddings().register_forward_hook(ids_hook))

        def start(mod, args, kwargs):            # layer 0 sees every forward pass first
            hidden = args[0] if args else kwargs["hidden_states"]
            self._llm_continues = _past_length(kwargs) > 0
            if w("llm.token_ids"):
                ids = self._pending_ids
                if ids is None or tuple(ids.shape) != tuple(hidden.shape[:2]):
                    ids = torch.full(hidden.shape[:2], -1, dtype=torch.long, device=hidden.device)   # unknown
                self._record("llm.token_ids", ids, seq=True)
            self._pending_ids = None
            if w("llm.embed"):
                self._record("llm.embed", hidden, seq=True)

        self._handles.append(dec.layers[0].register_forward_pre_hook(start, with_kwargs=True))
        for i, layer in enumerate(dec.layers):
            if w(f"llm.layers.{i}.hidden"):
                self._handles.append(layer.register_forward_hook(
                    lambda mod, args, out, n=f"llm.layers.{i}.hidden": self._record(n, _first(out), seq=True)))
        if w("llm.final"):
            def final(mod, args, out):
                h = out.last_hidden_state if hasattr(out, "last_hidden_state") else _first(out)
                self._record("llm.final", h, seq=True)
            self._handles.append(dec.register_forward_hook(final))

    def _wrap_scheduler(self, detok) -> None:
        """Wrap ``detok.scheduler.step`` / ``set_timesteps`` on the instance to see every diffusion step."""
        sched = detok.scheduler
        prev = {k: sched.__dict__[k] for k in ("step", "set_timesteps") if k in sched.__dict__}
        inner_step, inner_set = sched.step, sched.set_timesteps
        count = [0]

        def set_timesteps(*args, **kwargs):
            count[0] = 0
            return inner_set(*args, **kwargs)

        def step(model_output, timestep, sample, *args, **kwargs):
            out = inner_step(model_output, timestep, sample, *args, **kwargs)
            k = count[0]
            count[0] += 1
            if self._active:
                latents = out[0] if isinstance(out, tuple) else out.prev_sample
                self._record(f"detok.step.{k}.latents", latents)
                self._record(f"detok.step.{k}.noise_pred", model_output)
                self._record(f"detok.step.{k}.timestep", torch.as_tensor(timestep))
            return out

        sched.step, sched.set_timesteps = step, set_timesteps

        def undo():
            if sched.__dict__.get("step") is step:          # we are on top: restore what was there
                for k, mine in (("step", step), ("set_timesteps", set_timesteps)):
                    if k in prev:
                        setattr(sched, k, prev[k])
                    else:
                        del sched.__dict__[k]
            # else a later trace wrapped on top of us and is still active; ours stays as a pass-through
        self._undo.append(undo)

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

    def _record(self, name: str, x, seq: bool = False) -> None:
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
            parts = [torch.cat(run, dim=1) if len(run) > 1 else run[0] for run in self._data[name]]
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


def trace(model: nn.Module, capture: Sequence[str] | str | None = None, layers: Iterable[int] | None = None,
          to_cpu: bool = True, dtype: torch.dtype | None = None, max_bytes: int | None = None,
          expect: dict | None = None) -> Trace:
    """Capture named activations of ``model`` during a ``with`` block; see the module docstring.

    Args:
        capture: glob patterns over the names (default: every name).
        layers: LLM / ViT layer indices to keep (negative from the end).
        to_cpu, dtype: store detached copies on CPU / in this floating dtype.
        max_bytes: raise :class:`TraceMemoryError` once the stored tensors would exceed it.
        expect: sizes of the coming run for an up-front check against ``max_bytes``, the keyword
            arguments of :func:`estimate_bytes` (``seq_len``, ``batch``, ``views``, ``images``, ``steps``,
            ``guidance_scale``).
    """
    return Trace(model, capture, layers, to_cpu, dtype, max_bytes, expect)


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

    def put(name, shape, dt=None):
        if w(name) and all(int(s) >= 0 for s in shape) and shape[0] > 0:
            shapes[name] = (tuple(int(s) for s in shape), dt or fdt)

    n_vit_out = st.vit.config.n_queries if st.vit is not None else 256
    if views and st.vit is not None:
        c = st.vit.config
        tile = getattr(cfg, "tile_size", c.image_size)
        n = (tile // c.patch_size) ** 2
        put("vit.embed", (views, n, c.width))
        for i in range(st.n_vit_layers):
            put(f"vit.blocks.{i}", (views, n, c.width))
        put("vit.attn_pool.attn", (views, c.pool_heads, c.n_queries, n))
        put("vit.attn_pool.out", (views, c.n_queries, c.output_dim))
        put("vit.out", (views, c.n_queries, c.output_dim))
    if st.lvlm is not None:
        rin, rout = st.lvlm.input_resampler.config, st.lvlm.output_resampler.config
        if views:
            put("input_resampler.attn", (views, rin.num_heads, rin.num_queries, n_vit_out))
            put("input_resampler.out", (views, rin.num_queries, rin.embed_dim))
        if seq_len:
            d = st.llm.config.hidden_size
            put("llm.token_ids", (batch, seq_len), torch.int64)
            put("llm.embed", (batch, seq_len, d))
            for i in range(st.n_llm_layers):
                put(f"llm.layers.{i}.hidden", (batch, seq_len, d))
            put("llm.final", (batch, seq_len, d))
        if images:
            put("output_resampler.attn", (images, rout.num_heads, rout.num_queries, rin.num_queries))
            put("output_resampler.out", (images, rout.num_queries, rout.embed_dim))
    if images and st.detok is not None:
        c = st.detok.config
        n_in = st.lvlm.output_resampler.config.num_queries if st.lvlm is not None else c.num_queries
        calls = images * (2 if guidance_scale is not None and guidance_scale > 1.0 else 1)
        for l in range(st.n_detok_layers):
            put(f"detok.resampler.attn.{l}", (calls, c.heads, c.num_queries, n_in + c.num_queries))
        put("detok.resampler.latents", (calls, c.num_queries, c.dim))
        put("detok.resampler.pool_attn", (calls, c.heads, 1, c.num_queries + 1))
        lat = (images, st.detok.unet.config.in_channels, c.latent_size, c.latent_size)
        for k in range(steps):
            put(f"detok.step.{k}.latents", lat)
            put(f"detok.step.{k}.noise_pred", lat)
            if w(f"detok.step.{k}.timestep"):
                shapes[f"detok.step.{k}.timestep"] = (() if images == 1 else (images,), torch.float32)
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
