"""One interactive view per pipeline stage, for the workbook.

=====================================  =====================================================================
``tiling_viewer(image, base)``         the any-res grids: both selection rules, the choice, the tiles
``attention_viewer(model, image)``     where each resampler query looks, per view, per head or averaged;
                                       ``which="llm"`` (a prompt): the LLM's attention per layer and head;
                                       ``"output_resampler"``, ``"detok.adapter"`` (a caption)
``token_timeline(model, prompt)``      the generated tokens coloured by kind, and the processor's decision
                                       at every step (state, forced id, overridden score, P(``<img>``))
``boi_explorer(model, prompt)``        P(``<img>``) per position and through the logit lens; generation
                                       under the faithful (``0.0``) or strict (``-inf``) blocking
                                       (these two also take a Type-A ``ChameleonTiny``: code tokens,
                                       greedy or sampled codes, pictures from the VQ decoder)
``diffusion_scrubber(model, caption)`` the de-tokenizer's latents decoded at every diffusion step, and the
                                       clean image each step predicts
``patching_explorer(model, a, b)``     activation patching between two prompts: the layer x position
                                       map, one cell's patched continuation and P(``<img>``)
=====================================  =====================================================================

Each function returns a *view* object. In Jupyter, displaying it shows

* the live ipywidgets 8 interface (``application/vnd.jupyter.widget-view+json``) when a kernel with a
  front end is present,
* always a static ``image/png`` of the current state, so a saved notebook (or a front end without the
  widget manager) still shows a picture, and
* a short deterministic ``text/plain`` such as ``TilingViewer(image=128x64, base=64, chosen=2x1, ...)``:
  counts and names only (no object ids, no measured floats), so notebook regression tools can compare it.

Every view also offers ``.figure()`` (a fresh :class:`matplotlib.figure.Figure` of the current state,
built without pyplot, so nothing is registered with a backend and nothing needs closing), ``.png()``,
``.widget`` (the ipywidgets container), ``.controls`` (its interactive controls by name; setting a
control's ``value`` updates the view) and ``.set(**values)``.

Pictures are drawn with matplotlib's object API and rendered to PNG; the live widget shows that PNG in
an ``ipywidgets.Image``, so no matplotlib widget backend is needed.
"""
from __future__ import annotations

import html
import io
import math
import re
from typing import Any

import numpy as np
import torch

__all__ = ["tiling_viewer", "attention_viewer", "token_timeline", "boi_explorer", "diffusion_scrubber",
           "patching_explorer", "TilingViewer", "AttentionViewer", "TokenAttentionViewer", "GridAttentionViewer",
           "TokenTimeline", "BoiExplorer", "DiffusionScrubber", "PatchingExplorer",
           "frontend_connected", "FRONTEND", "TOKEN_CLASSES", "classify_tokens"]

WIDGET_MIME = "application/vnd.jupyter.widget-view+json"

#: ``None``: detect a kernel (see :func:`frontend_connected`); ``True``/``False``: force it.
FRONTEND: bool | None = None

DPI = 80


def frontend_connected() -> bool:
    """Is there a Jupyter kernel that could show live widgets? (``FRONTEND`` overrides the check.)"""
    if FRONTEND is not None:
        return bool(FRONTEND)
    try:
        from IPython import get_ipython
    except ImportError:                      # pragma: no cover - IPython comes with ipywidgets
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _as_uint8(img) -> np.ndarray:
    """PIL image or [3, H, W] / [H, W, 3] array in [0, 1] or uint8 -> uint8 [H, W, 3]."""
    if torch.is_tensor(img):
        img = img.detach().float().cpu().numpy()
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
        a = np.moveaxis(a, 0, -1)
    if a.dtype != np.uint8:
        a = np.clip(np.round(a * 255.0), 0, 255).astype(np.uint8)
    return a


def _style(ax, title: str | None = None, fontsize: int = 9) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize)


# --------------------------------------------------------------------------- the common part

class StageView:
    """Base of the views: state on the object, controls that change it, figure and PNG of it."""

    _kind = "StageView"

    def __init__(self) -> None:
        self.controls: dict[str, Any] = {}
        self._widget = None
        self._picture = None                 # ipywidgets.Image inside the widget
        self._version = 0                    # bumped on every state change
        self._png_cache: tuple[int, bytes] | None = None
        self._picture_version = -1           # the version the widget's picture shows

    # ---- to implement
    def _draw(self, fig) -> None:            # pragma: no cover - abstract
        raise NotImplementedError

    def _figsize(self) -> tuple[float, float]:
        return (9.0, 4.0)

    def _summary(self) -> str:               # pragma: no cover - abstract
        raise NotImplementedError

    def _build_widget(self):                 # pragma: no cover - abstract
        raise NotImplementedError

    def _update_panels(self) -> None:
        """Refresh the widget's non-picture parts (HTML etc.) after a state change."""

    # ---- pictures
    def figure(self):
        """A new matplotlib Figure of the current state (not registered with pyplot)."""
        fig = _figure(*self._figsize())
        self._draw(fig)
        return fig

    def png(self) -> bytes:
        """PNG bytes of the current state (cached until the state changes)."""
        if self._png_cache is None or self._png_cache[0] != self._version:
            fig = self.figure()
            self._png_cache = (self._version, _to_png(fig))
            fig.clear()
        return self._png_cache[1]

    # ---- state changes
    def _changed(self) -> None:
        self._version += 1
        if self._widget is not None:
            self._update_panels()
            if frontend_connected():
                self._refresh_picture()

    def _refresh_picture(self) -> None:
        if self._picture is not None and self._picture_version != self._version:
            self._picture.value = self.png()
            self._picture_version = self._version

    def set(self, **values) -> "StageView":
        """Set controls by name (as a user would), e.g. ``view.set(query=5, head=-1)``; returns the view."""
        for name, value in values.items():
            if name not in self.controls:
                raise KeyError(f"{self._kind} has no control {name!r}; controls: {', '.join(self.controls)}")
            self.controls[name].value = value
        return self

    @property
    def widget(self):
        """The ipywidgets container (built on first use, its picture brought up to date)."""
        if self._widget is None:
            import ipywidgets as W

            self._picture = W.Image(format="png", layout=W.Layout(max_width="100%"))
            self._widget = self._build_widget()
            self._update_panels()
        self._refresh_picture()
        return self._widget

    # ---- display
    def __repr__(self) -> str:
        return self._summary()

    def _repr_mimebundle_(self, include=None, exclude=None, **kwargs):
        data = {"text/plain": repr(self), "image/png": self.png()}
        if frontend_connected():
            w = self.widget
            data[WIDGET_MIME] = {"version_major": 2, "version_minor": 0, "model_id": w.model_id}
        if include:
            data = {k: v for k, v in data.items() if k in include}
        if exclude:
            data = {k: v for k, v in data.items() if k not in exclude}
        return data

    def _observe(self, name: str, control, attr: str | None = None, convert=lambda v: v) -> None:
        """Register ``control`` under ``name``; its value is mirrored into ``self.<attr>``."""
        attr = attr or name
        self.controls[name] = control

        def on_change(change):
            setattr(self, attr, convert(change["new"]))
            self._changed()

        control.observe(on_change, names="value")


# =========================================================================== 1. tiling

class TilingViewer(StageView):
    """The any-res decision for one image; the dropdown redraws the grid of any candidate.

    ``decision``: :class:`~seedx_lab.anyres.TilingDecision`; ``selected``: the grid shown (``"CxR"``).
    """

    _kind = "TilingViewer"

    def __init__(self, image, base: int, pinpoints=None):
        super().__init__()
        import ipywidgets as W

        from .. import anyres

        self.image = anyres.to_pil_rgb(image)
        self.base = int(base)
        self.pinpoints = tuple(pinpoints or anyres.PINPOINTS)
        self.decision = anyres.choose_resolution(self.image.size, self.base, self.pinpoints)
        self.rows = {row["grid"]: row for row in self.decision.table}
        self.chosen = self._grid_name(self.decision.chosen)
        self.llava = self._grid_name(self.decision.llava_choice)
        self.aspect = self._grid_name(self.decision.aspect_choice)
        self.selected = self.chosen
        options = [(self._label(row), row["grid"]) for row in self.decision.table]
        self._observe("grid", W.Dropdown(options=options, value=self.selected, description="grid",
                                         layout=W.Layout(width="max-content")), attr="selected")

    def _grid_name(self, wh: tuple[int, int]) -> str:
        return f"{wh[0] // self.base}x{wh[1] // self.base}"

    def _label(self, row: dict) -> str:
        tags = [name for name, g in (("SEED-X", self.chosen), ("LLaVA-NeXT", self.llava), ("aspect", self.aspect))
                if g == row["grid"]]
        tag = f"   <- {', '.join(tags)}" if tags else ""
        return (f"{row['grid']}  {row['width']}x{row['height']}  effective {row['effective']}  "
                f"waste {row['waste']}{tag}")

    # ---- geometry the figure draws (also what the tests check)
    def grid_lines(self, grid: str | None = None, space: str = "input") -> dict[str, list[float]]:
        """Inner tile borders of ``grid`` (default: the selected one) as pixel coordinates.

        ``space="input"``: on the input image (the image is stretched to the grid, so borders fall at
        ``i * w0 / C`` and ``j * h0 / R``); ``space="resized"``: on the stretched image (``i * base``).
        """
        from ..anyres import parse_grid

        c, r = parse_grid(grid or self.selected)
        if space == "input":
            w, h = self.image.size
            return {"x": [i * w / c for i in range(1, c)], "y": [j * h / r for j in range(1, r)]}
        if space == "resized":
            return {"x": [float(i * self.base) for i in range(1, c)], "y": [float(j * self.base) for j in range(1, r)]}
        raise ValueError(f"space must be 'input' or 'resized', got {space!r}")

    def why(self) -> list[str]:
        """The decision in three sentences."""
        d, w0, h0 = self.decision, *self.image.size
        la, asp = self.rows[self.llava], self.rows[self.aspect]
        area = lambda g: self.rows[g]["width"] * self.rows[g]["height"]   # noqa: E731
        if area(self.llava) == area(self.aspect):
            rule = "equal areas, so the LLaVA-NeXT pick is kept"
        else:
            rule = f"the smaller area is kept ({'LLaVA-NeXT' if self.chosen == self.llava else 'aspect'} rule)"
        return [f"LLaVA-NeXT rule (most effective pixels, then least waste): {self.llava} "
                f"(effective {la['effective']}, waste {la['waste']})",
                f"aspect rule (closest h/w ratio, then closest area): {self.aspect} "
                f"(ratio factor {asp['aspect_ratio_diff']:.3f}, area factor {asp['area_ratio']:.3f})",
                f"SEED-X: {rule} -> {self.chosen}, {d.grid[0] * d.grid[1]} tile(s) + 1 global view "
                f"= {d.n_tiles} views of {self.base}x{self.base}; input {w0}x{h0} is stretched, not padded"]

    def _summary(self) -> str:
        w, h = self.image.size
        return (f"TilingViewer(image={w}x{h}, base={self.base}, chosen={self.chosen}, selected={self.selected}, "
                f"candidates={len(self.decision.candidates)})")

    def _figsize(self):
        return (11.0, 4.6)

    def _draw(self, fig) -> None:
        from matplotlib.patches import Rectangle

        from ..anyres import parse_grid

        c, r = parse_grid(self.selected)
        row = self.rows[self.selected]
        W_, H_ = row["width"], row["height"]
        w0, h0 = self.image.size
        axes = fig.subplots(1, 3, width_ratios=[1.0, 1.0, 0.55])
        is_chosen = self.selected == self.chosen
        colour = "tab:green" if is_chosen else "tab:orange"

        # (a) the input, with the selected grid mapped back onto it
        ax = axes[0]
        ax.imshow(np.asarray(self.image), extent=(0, w0, h0, 0), interpolation="nearest")
        lines = self.grid_lines(space="input")
        for x in lines["x"]:
            ax.plot([x, x], [0, h0], color=colour, lw=2, gid="grid-x")
        for y in lines["y"]:
            ax.plot([0, w0], [y, y], color=colour, lw=2, gid="grid-y")
        ax.set_xlim(0, w0)
        ax.set_ylim(h0, 0)
        _style(ax, f"input {w0}x{h0} with grid {self.selected}")

        # (b) the image stretched to the candidate, tiles numbered, LLaVA-NeXT's fit box dashed
        ax = axes[1]
        small = max(W_, H_) > 1024          # draw big canvases at reduced size (same coordinates)
        k = 1024 / max(W_, H_) if small else 1.0
        stretched = self.image.resize((max(1, round(W_ * k)), max(1, round(H_ * k))))
        ax.imshow(np.asarray(stretched), extent=(0, W_, H_, 0), interpolation="nearest")
        for x in self.grid_lines(space="resized")["x"]:
            ax.plot([x, x], [0, H_], color=colour, lw=2, gid="tile-x")
        for y in self.grid_lines(space="resized")["y"]:
            ax.plot([0, W_], [y, y], color=colour, lw=2, gid="tile-y")
        for j in range(r):
            for i in range(c):
                ax.text((i + 0.5) * self.base, (j + 0.5) * self.base,
                        f"{j * c + i}\n({(i + 0.5) / c:.2f}, {(j + 0.5) / r:.2f})", ha="center", va="center",
                        fontsize=8, color="white", bbox=dict(boxstyle="round", fc="black", alpha=0.5, lw=0))
        s = min(W_ / w0, H_ / h0)
        fw, fh = int(w0 * s), int(h0 * s)
        ax.add_patch(Rectangle(((W_ - fw) / 2, (H_ - fh) / 2), fw, fh, fill=False, ls="--", lw=1.2,
                               ec="white", gid="llava-fit"))
        ax.set_xlim(0, W_)
        ax.set_ylim(H_, 0)
        _style(ax, f"stretched to {W_}x{H_}: {c * r} tile(s)\n"
                   f"effective {row['effective']}, waste {row['waste']} (dashed: ratio-kept fit)")

        # (c) the global view
        ax = axes[2]
        ax.imshow(np.asarray(self.image.resize((self.base, self.base))), extent=(0, self.base, self.base, 0))
        _style(ax, f"view {c * r}: global\n{self.base}x{self.base}, position (0.50, 0.50)")

        marks = [n for n, g in (("SEED-X", self.chosen), ("LLaVA-NeXT", self.llava), ("aspect", self.aspect))
                 if g == self.selected]
        head = f"candidate {self.selected}" + (f" = pick of {', '.join(marks)}" if marks else " (not picked)")
        fig.suptitle(head + "\n" + "\n".join(self.why()), fontsize=9, x=0.01, ha="left")

    def _build_widget(self):
        import ipywidgets as W

        self._why = W.HTML()
        return W.VBox([self.controls["grid"], self._why, self._picture])

    def _update_panels(self) -> None:
        row = self.rows[self.selected]
        items = "".join(f"<li>{html.escape(s)}</li>" for s in self.why())
        self._why.value = (f"<ul style='margin:0'>{items}</ul><div>selected {self.selected}: aspect factor "
                           f"{row['aspect_ratio_diff']:.3f}, area factor {row['area_ratio']:.3f}</div>")


def tiling_viewer(image, base=448, pinpoints=None) -> TilingViewer:
    """The any-res grid of ``image``. ``base``: tile side in pixels, or a model (its ``config.tile_size``)."""
    if not isinstance(base, (int, np.integer)):
        tile = getattr(getattr(base, "config", None), "tile_size", None)
        if tile is None:
            raise ValueError(f"base must be a tile size in pixels or a SeedX model, got {type(base).__name__}")
        base = tile
    if base < 1:
        raise ValueError(f"base must be positive, got {base}")
    return TilingViewer(image, int(base), pinpoints)


# =========================================================================== 2. resampler attention

_ATTN_NAMES = {"input_resampler": "input_resampler.attn", "vit.attn_pool": "vit.attn_pool.attn"}
_TOKEN_ATTN = ("llm", "output_resampler", "detok.adapter")


class AttentionViewer(StageView):
    """Attention of one query over the key grid of one view, overlaid on that view's pixels.

    ``attn``: ``[views, heads, queries, keys]`` (captured as ``input_resampler.attn`` or
    ``vit.attn_pool.attn``); keys are laid out on a ``sqrt(keys)`` grid in raster order over the tile.
    """

    _kind = "AttentionViewer"

    def __init__(self, attn: torch.Tensor, tiles, image, which: str):
        super().__init__()
        import ipywidgets as W

        if attn.dim() != 4:
            raise ValueError(f"expected attention [views, heads, queries, keys], got {tuple(attn.shape)}")
        self.attn = attn.detach().float().cpu()
        self.tiles, self.image, self.which = tiles, image, which
        self.n_views, self.n_heads, self.n_queries, n_keys = self.attn.shape
        if len(tiles) != self.n_views:
            raise ValueError(f"the attention has {self.n_views} views but the image makes {len(tiles)} "
                             "(tiles + global view); was the trace taken on this image?")
        self.key_side = math.isqrt(n_keys)
        if self.key_side ** 2 != n_keys:
            raise ValueError(f"keys ({n_keys}) do not form a square grid")
        self.query_side = math.isqrt(self.n_queries) if math.isqrt(self.n_queries) ** 2 == self.n_queries else None
        self.view, self.query, self.head = self.n_views - 1, 0, -1
        views = [(self._view_name(v), v) for v in range(self.n_views)]
        heads = [("mean over heads", -1)] + [(f"head {h}", h) for h in range(self.n_heads)]
        self._observe("view", W.Dropdown(options=views, value=self.view, description="view"))
        self._observe("query", W.IntSlider(value=0, min=0, max=self.n_queries - 1, description="query",
                                           continuous_update=False))
        self._observe("head", W.Dropdown(options=heads, value=-1, description="head"))

    def _view_name(self, v: int) -> str:
        c, r = self.tiles.decision.grid
        if v == self.n_views - 1:
            return "global view"
        return f"tile {v} (row {v // c}, col {v % c})"

    def heatmap(self, view: int | None = None, query: int | None = None, head: int | None = None) -> np.ndarray:
        """``[side, side]`` attention of ``query`` over the keys of ``view`` (head, or -1 for the mean)."""
        view = self.view if view is None else view
        query = self.query if query is None else query
        head = self.head if head is None else head
        a = self.attn[view, :, query]                                      # [heads, keys]
        row = a.mean(0) if head < 0 else a[head]
        return row.reshape(self.key_side, self.key_side).numpy()

    def _summary(self) -> str:
        head = "mean" if self.head < 0 else str(self.head)
        view = "global" if self.view == self.n_views - 1 else f"tile{self.view}"
        return (f"AttentionViewer(which={self.which}, views={self.n_views}, queries={self.n_queries}, "
                f"heads={self.n_heads}, keys={self.key_side}x{self.key_side}, view={view}, query={self.query}, "
                f"head={head})")

    def _figsize(self):
        return (11.0, 4.0)

    def _draw(self, fig) -> None:
        from matplotlib.patches import Rectangle

        heat = self.heatmap()
        base = self.tiles.images[self.view].size[0]
        axes = fig.subplots(1, 3)

        ax = axes[0]
        w0, h0 = self.image.size
        ax.imshow(np.asarray(self.image), extent=(0, w0, h0, 0))
        c, r = self.tiles.decision.grid
        if self.view < self.n_views - 1:
            i, j = self.view % c, self.view // c
            box = (i * w0 / c, j * h0 / r, w0 / c, h0 / r)
        else:
            box = (0, 0, w0, h0)
        ax.add_patch(Rectangle(box[:2], box[2], box[3], fill=False, ec="cyan", lw=2.5))
        _style(ax, f"input {w0}x{h0}: {self._view_name(self.view)}")

        ax = axes[1]
        ax.imshow(np.asarray(self.tiles.images[self.view]), extent=(0, base, base, 0))
        ax.imshow(heat, extent=(0, base, base, 0), cmap="inferno", alpha=0.6, interpolation="nearest")
        _style(ax, f"query {self.query} over the {self.key_side}x{self.key_side} keys")

        ax = axes[2]
        im = ax.imshow(heat, cmap="inferno", interpolation="nearest", vmin=0)
        if self.query_side:                  # the query's own place on its grid (its 2-D position)
            qx, qy = self.query % self.query_side, self.query // self.query_side
            s = self.key_side / self.query_side
            ax.plot([(qx + 0.5) * s - 0.5], [(qy + 0.5) * s - 0.5], marker="+", ms=14, mew=2, color="cyan")
        fig.colorbar(im, ax=ax, fraction=0.046)
        head = "mean over heads" if self.head < 0 else f"head {self.head}"
        _style(ax, f"{self.which}: {head}\n(+ = the query's own grid position)")

    def _build_widget(self):
        import ipywidgets as W

        return W.VBox([W.HBox([self.controls["view"], self.controls["head"]]), self.controls["query"],
                       self._picture])


@torch.no_grad()
def attention_viewer(model, image, which: str = "input_resampler", trace=None, base: int | None = None):
    """Attention maps of ``which`` (``"input_resampler"``: 64 queries over the 256 ViT features of a view;
    ``"vit.attn_pool"``: the ViT's 256 pooling queries over its patches) for ``image``.

    Three more modes take text in place of ``image``: ``"llm"`` (a prompt: the LLM's self-attention per
    layer and head, by default of the last position, the one that predicts ``<img>``; a
    :class:`TokenAttentionViewer`), ``"output_resampler"`` (a caption: its 64 queries over the 64
    image-token states of the forced block) and ``"detok.adapter"`` (a caption: the de-tokenizer
    adapter's Perceiver layers over those features and its latents); both :class:`GridAttentionViewer`.

    Runs ``model.encode_image`` and the input resampler under :func:`seedx_lab.trace`, or reads the
    attention from a finished ``trace`` that captured it for this image (``model`` may then be None if
    ``base``, the tile size, is given).
    """
    from .. import anyres
    from .trace import trace as make_trace

    if which in _TOKEN_ATTN:
        if model is None:
            raise ValueError(f"which={which!r} needs the model")
        return _llm_attention_view(model, image) if which == "llm" else _image_side_attention_view(model, image, which)
    if which not in _ATTN_NAMES:
        raise ValueError(f"which must be one of {', '.join([*_ATTN_NAMES, *_TOKEN_ATTN])}, got {which!r}")
    name = _ATTN_NAMES[which]
    if trace is None:
        if model is None:
            raise ValueError("give a model (or a finished trace and base=)")
        with make_trace(model, capture=[name]) as t:
            feats, pos, tiles = model.encode_image(image)
            if which == "input_resampler":
                model.lvlm.image_embeddings(feats, pos)
        attn = t[name]
    else:
        if name not in trace:
            raise KeyError(f"the trace did not capture {name!r}")
        attn = trace[name]
        if isinstance(attn, list):
            attn = attn[-1]
        tile = base or getattr(getattr(model, "config", None), "tile_size", None)
        if tile is None:
            raise ValueError("reading a trace without a model needs base= (the tile size)")
        tiles = anyres.tile_image(image, base=tile)
    return AttentionViewer(attn, tiles, anyres.to_pil_rgb(image), which)


# =========================================================================== 2b. attention over tokens

class TokenAttentionViewer(StageView):
    """The LLM's self-attention: which earlier tokens one position reads, per layer and head.

    ``attn``: ``{layer: [heads, positions, positions]}`` (captured as ``llm.layers.{i}.attn``); ``tokens``:
    the sequence. The default query is the last prompt position, the one that decides ``<img>``.
    """

    _kind = "TokenAttentionViewer"

    def __init__(self, attn: list[torch.Tensor], tokens: list[str], p_boi: float | None = None):
        super().__init__()
        import ipywidgets as W

        self.attn = [a.detach().float().cpu() for a in attn]                      # L x [heads, P, P]
        self.tokens, self.p_boi = tokens, p_boi
        self.n_layers, (self.n_heads, P, _) = len(self.attn), self.attn[0].shape
        self.layer, self.head, self.query = self.n_layers - 1, -1, P - 1
        self._observe("layer", W.IntSlider(value=self.layer, min=0, max=self.n_layers - 1, description="layer",
                                           continuous_update=False))
        self._observe("head", W.Dropdown(options=[("mean over heads", -1)] + [(f"head {h}", h) for h in range(self.n_heads)],
                                         value=-1, description="head"))
        self._observe("query", W.IntSlider(value=self.query, min=0, max=P - 1, description="query",
                                           continuous_update=False))

    def row(self, layer: int | None = None, head: int | None = None, query: int | None = None) -> np.ndarray:
        """``[positions]`` attention of ``query`` over the keys (zero after the query)."""
        layer = self.layer if layer is None else layer
        head = self.head if head is None else head
        query = self.query if query is None else query
        a = self.attn[layer][:, query]
        return (a.mean(0) if head < 0 else a[head]).numpy()

    def by_layer(self) -> np.ndarray:
        """``[layers, positions]``: the query's row in every layer (the chosen head, or the mean)."""
        return np.stack([self.row(layer=i) for i in range(self.n_layers)])

    def _summary(self) -> str:
        head = "mean" if self.head < 0 else str(self.head)
        return (f"TokenAttentionViewer(layers={self.n_layers}, heads={self.n_heads}, positions={len(self.tokens)}, "
                f"layer={self.layer}, head={head}, query={self.query})")

    def _figsize(self):
        return (max(7.0, min(0.28 * len(self.tokens) + 2.5, 16.0)), 4.6)

    def _draw(self, fig) -> None:
        P = len(self.tokens)
        ax1, ax2 = fig.subplots(2, 1, sharex=True, height_ratios=[1.3, 1])
        im = ax1.imshow(self.by_layer(), aspect="auto", cmap="viridis", vmin=0, interpolation="nearest")
        ax1.set_yticks(range(self.n_layers), [f"layer {i}" for i in range(self.n_layers)], fontsize=7)
        head = "mean over heads" if self.head < 0 else f"head {self.head}"
        extra = f", P(<img> next) = {self.p_boi:.3f}" if self.p_boi is not None and self.query == P - 1 else ""
        ax1.set_title(f"what position {self.query} ('{self.tokens[self.query]}') reads, {head}{extra}", fontsize=9)
        fig.colorbar(im, ax=ax1, fraction=0.025)
        r = self.row()
        ax2.bar(np.arange(P), r, color=["tab:red" if i == self.query else "tab:blue" for i in range(P)])
        ax2.set_ylabel(f"layer {self.layer}", fontsize=8)
        ax2.set_xticks(range(P), self.tokens, rotation=90, fontsize=7)

    def _build_widget(self):
        import ipywidgets as W

        return W.VBox([W.HBox([self.controls["layer"], self.controls["head"]]), self.controls["query"], self._picture])


class GridAttentionViewer(StageView):
    """Attention of one query over keys laid out on square grids (the 64 image tokens as 8 x 8).

    ``attn``: ``{label: [heads, queries, keys]}`` (one entry per layer); ``groups``: ``[(name, start, stop)]``
    key ranges, each drawn as a square grid (e.g. the de-tokenizer adapter's inputs and its latents).
    """

    _kind = "GridAttentionViewer"

    def __init__(self, attn: dict[str, torch.Tensor], groups: list[tuple[str, int, int]], which: str):
        super().__init__()
        import ipywidgets as W

        self.attn = {k: v.detach().float().cpu() for k, v in attn.items()}
        self.groups, self.which = groups, which
        first = next(iter(self.attn.values()))
        self.n_heads, self.n_queries, _ = first.shape
        self.layer, self.head, self.query = next(iter(self.attn)), -1, 0
        self._observe("layer", W.Dropdown(options=list(self.attn), value=self.layer, description="layer"))
        self._observe("head", W.Dropdown(options=[("mean over heads", -1)] + [(f"head {h}", h) for h in range(self.n_heads)],
                                         value=-1, description="head"))
        self._observe("query", W.IntSlider(value=0, min=0, max=self.n_queries - 1, description="query",
                                           continuous_update=False))

    def heatmaps(self) -> list[np.ndarray]:
        a = self.attn[self.layer][:, self.query]
        row = (a.mean(0) if self.head < 0 else a[self.head]).numpy()
        out = []
        for _name, s, e in self.groups:
            side = math.isqrt(e - s)
            out.append(row[s:e].reshape(side, side) if side * side == e - s else row[s:e][None])
        return out

    def _summary(self) -> str:
        head = "mean" if self.head < 0 else str(self.head)
        return (f"GridAttentionViewer(which={self.which}, layers={len(self.attn)}, heads={self.n_heads}, "
                f"queries={self.n_queries}, groups={'+'.join(g[0] for g in self.groups)}, layer={self.layer}, "
                f"head={head}, query={self.query})")

    def _figsize(self):
        return (3.6 * len(self.groups) + 1, 3.4)

    def _draw(self, fig) -> None:
        axes = np.atleast_1d(fig.subplots(1, len(self.groups)))
        head = "mean over heads" if self.head < 0 else f"head {self.head}"
        for ax, heat, (name, s, e) in zip(axes, self.heatmaps(), self.groups):
            im = ax.imshow(heat, cmap="inferno", vmin=0, interpolation="nearest")
            fig.colorbar(im, ax=ax, fraction=0.046)
            _style(ax, f"{self.which} {self.layer}: query {self.query}, {head}\nover {name} (mass {heat.sum():.2f})", 8)

    def _build_widget(self):
        import ipywidgets as W

        return W.VBox([W.HBox([self.controls["layer"], self.controls["head"]]), self.controls["query"], self._picture])


@torch.no_grad()
def _llm_attention_view(model, prompt) -> TokenAttentionViewer:
    from .probes import _as_ids
    from .trace import trace as make_trace

    ids = _as_ids(model, prompt)
    with make_trace(model, capture=["llm.layers.*.attn"]) as t:
        logits = model.lvlm.llm(input_ids=ids, use_cache=False).logits[0, -1].float()
    L = model.lvlm.llm.config.num_hidden_layers
    tokens = model.tokenizer.convert_ids_to_tokens(ids[0].tolist())
    return TokenAttentionViewer([t[f"llm.layers.{i}.attn"][0] for i in range(L)], tokens,
                                float(logits.softmax(-1)[model.token_ids.boi]))


@torch.no_grad()
def _image_side_attention_view(model, caption: str, which: str) -> GridAttentionViewer:
    """Generate the image features of ``caption`` (the LLM's forced block and the output resampler) and
    read the output resampler's or the de-tokenizer adapter's attention on them."""
    from .trace import trace as make_trace

    if not isinstance(caption, str):
        raise TypeError(f"which={which!r} takes a caption (str), got {type(caption).__name__}")
    tok = model.tokenizer
    ids = torch.tensor([model.encode_ids(caption + "<img>")], device=model.device)
    with make_trace(model, capture=["output_resampler.attn", "detok.resampler.attn.*"]) as t:
        out = model.lvlm.generate(ids, max_new_tokens=model.lvlm.num_img_tokens + 1, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id, max_blocks=1)
        if not out.images[0]:
            raise RuntimeError("the forced block did not complete; no image features to look at")
        if which == "detok.adapter":
            model.detok.encode_condition(out.images[0][0].features[None])
    if which == "output_resampler":
        a = t["output_resampler.attn"][0]
        return GridAttentionViewer({"": a}, [("the 64 image-token states", 0, a.shape[-1])], which)
    n_layers = len(model.detok.resampler.layers)
    attn = {f"layer {l}": t[f"detok.resampler.attn.{l}"][0] for l in range(n_layers)}
    first = next(iter(attn.values()))
    n_in = first.shape[-1] - first.shape[-2]
    return GridAttentionViewer(attn, [("its inputs (output-resampler features)", 0, n_in),
                                      ("its latents", n_in, first.shape[-1])], which)


# =========================================================================== 3. token timeline

#: token kinds and their colours
TOKEN_CLASSES = {
    "text": "#d9d9d9",
    "special": "#f7f7f7",     # <s>, </s>, <pad>
    "boi": "#31a354",         # <img>
    "image": "#9ecae1",       # <img_xxxxx>
    "eoi": "#08519c",         # </img>
    "patch": "#fdae6b",       # <patch>, </patch>
    "code": "#bcbddc",        # a Type-A code token: <img_xxxxx> is code xxxxx of the VQ codebook
}
from .. import tokens as T
from ..tokens import IMG_TOKEN_RE as _IMG_RE  # the one image-token pattern


def classify_tokens(ids, tokenizer=None, token_ids=None, code_ids=None) -> list[str]:
    """Kind of each id: ``text``, ``special`` (bos/eos/pad), ``boi``, ``image``, ``eoi``, ``patch``, or
    ``code`` for the ids in ``code_ids`` (a Type-A model's codebook tokens, ``model.code_ids``)."""
    ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)
    codes = set() if code_ids is None else {int(i) for i in (code_ids.tolist() if hasattr(code_ids, "tolist") else code_ids)}
    special, img = set(), set()
    boi = eoi = None
    patch = set()
    if token_ids is not None:
        boi, eoi, patch, img = token_ids.boi, token_ids.eoi, {token_ids.bop, token_ids.eop}, set(token_ids.img)
    if tokenizer is not None:
        special = {i for i in (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) if i is not None}
        vocab = tokenizer.get_vocab()
        img |= {i for w, i in vocab.items() if _IMG_RE.fullmatch(w)}
        boi = vocab.get("<img>", boi)
        eoi = vocab.get("</img>", eoi)
        patch |= {vocab[w] for w in ("<patch>", "</patch>") if w in vocab}
    out = []
    for i in ids:
        if i == boi:
            out.append("boi")
        elif i == eoi:
            out.append("eoi")
        elif i in codes:
            out.append("code")
        elif i in img:
            out.append("image")
        elif i in patch:
            out.append("patch")
        elif i in special:
            out.append("special")
        else:
            out.append("text")
    return out


def _short(token: str, kind: str) -> str:
    m = _IMG_RE.fullmatch(token)
    if m:
        return f"{'c' if kind == 'code' else '#'}{int(m.group(1))}"
    return token if len(token) <= 7 else token[:6] + "…"


class TokenTimeline(StageView):
    """A generated sequence as coloured tokens, with the processor's decision at each step.

    ``ids``/``tokens``/``classes``: the whole sequence (prompt then generated); ``prompt_length``;
    ``decisions``: one dict per generated token (``step, state, block_index, forced_id,
    overridden_score, p_boi``, and optionally ``forced``); ``forced``: per generated token, did the
    processor force it (default: any state but ``outside``, SEED-X's forced block); ``arm``: the
    design whose words the view uses (:class:`_SeedXArm` when None).
    """

    _kind = "TokenTimeline"

    def __init__(self, ids: list[int], prompt_length: int, decisions: list[dict], tokens: list[str],
                 classes: list[str], id_to_token=None, arm=None):
        super().__init__()
        import ipywidgets as W

        self.arm = arm or _SeedXArm(None)
        self.ids, self.prompt_length, self.tokens, self.classes = ids, prompt_length, tokens, classes
        self.decisions = sorted(decisions, key=lambda d: d["step"])
        self.n_new = len(ids) - prompt_length
        if len(self.decisions) != self.n_new:
            raise ValueError(f"{len(self.decisions)} processor decisions for {self.n_new} generated tokens; "
                             "capture 'processor.decisions' and 'llm.token_ids' around one generate call")
        self.forced = [bool(d.get("forced", d["state"] != "outside")) for d in self.decisions]
        self.p_boi = np.array([d["p_boi"] for d in self.decisions], dtype=np.float64)
        self._id_to_token = id_to_token or (lambda i: str(i))
        self.step = 0
        self._observe("step", W.IntSlider(value=0, min=0, max=max(self.n_new - 1, 0), description="step",
                                          continuous_update=False))

    @property
    def new_classes(self) -> list[str]:
        return self.classes[self.prompt_length:]

    def counts(self) -> dict[str, int]:
        """How many generated tokens of each kind."""
        return {k: self.new_classes.count(k) for k in TOKEN_CLASSES if k in self.new_classes}

    def decision(self, step: int | None = None) -> dict:
        """The processor's decision at ``step`` (default: the selected one), with the chosen token."""
        step = self.step if step is None else step
        d = dict(self.decisions[step])
        pos = self.prompt_length + step
        d.update(position=pos, chosen_id=self.ids[pos], chosen=self.tokens[pos], kind=self.classes[pos],
                 forced=self.forced[step])
        d["forced_token"] = self._id_to_token(d["forced_id"]) if d["forced_id"] is not None else None
        return d

    def describe_step(self, step: int | None = None) -> str:
        d = self.decision(step)
        head = f"step {d['step']} (position {d['position']}): chose {d['chosen']} [{d['kind']}]"
        return f"{head}; {self.arm.explain(d)}; P(<img>) before processing {d['p_boi']:.4f}"

    def _summary(self) -> str:
        c = self.counts()
        kinds = ", ".join(f"{k}={c.get(k, 0)}" for k in self.arm.kinds)
        return (f"TokenTimeline(prompt_tokens={self.prompt_length}, new_tokens={self.n_new}, {kinds}, "
                f"forced={sum(self.forced)}, step={self.step})")

    def _figsize(self):
        per_row = 24
        rows = -(-len(self.ids) // per_row)
        return (11.0, 1.0 + 0.42 * rows + 2.4)

    def _draw(self, fig) -> None:
        from matplotlib.patches import Patch, Rectangle

        per_row = 24
        n = len(self.ids)
        rows = -(-n // per_row)
        ax_tok, ax_p = fig.subplots(2, 1, height_ratios=[0.42 * rows + 0.4, 2.0])
        sel = self.prompt_length + self.step if self.n_new else None
        for i, (tok, kind) in enumerate(zip(self.tokens, self.classes)):
            x, y = i % per_row, i // per_row
            gen = i >= self.prompt_length
            ec, lw = ("black", 2.5) if i == sel else ("white", 0.5)
            ax_tok.add_patch(Rectangle((x, y), 0.95, 0.9, fc=TOKEN_CLASSES[kind], ec=ec, lw=lw,
                                       alpha=1.0 if gen else 0.45, gid=f"token-{i}"))
            dark = kind in ("eoi", "boi")
            ax_tok.text(x + 0.47, y + 0.45, _short(tok, kind), ha="center", va="center", fontsize=6.5,
                        color="white" if dark else "black")
        if 0 < self.prompt_length < n:
            x, y = self.prompt_length % per_row, self.prompt_length // per_row
            ax_tok.plot([x - 0.03, x - 0.03], [y - 0.05, y + 0.95], color="tab:red", lw=2)
        ax_tok.set_xlim(-0.1, per_row)
        ax_tok.set_ylim(rows, -0.1)
        ax_tok.set_axis_off()
        ax_tok.legend(handles=[Patch(fc=TOKEN_CLASSES[k], ec="grey", label=k) for k in self.arm.legend],
                      loc="upper left", bbox_to_anchor=(0, 0), ncol=6, fontsize=7, frameon=False)
        ax_tok.set_title(f"{self.arm.name}: {self.prompt_length} prompt tokens (faded), {self.n_new} generated "
                         f"({self.arm.processor_share(self)})", fontsize=9)

        steps = np.arange(self.n_new)
        ax_p.plot(steps, self.p_boi, color="tab:green", lw=1)
        for state, colour in (("outside", "tab:grey"), ("inside", "tab:blue"), ("closing", "navy")):
            idx = [k for k, d in enumerate(self.decisions) if d["state"] == state]
            if idx:
                ax_p.scatter(idx, self.p_boi[idx], s=12, color=colour, label=state, zorder=3)
        if self.n_new:
            ax_p.axvline(self.step, color="black", lw=1, ls="--")
        top = float(self.p_boi.max()) if self.n_new else 1.0
        ax_p.set_ylim(0, max(top * 1.15, 1e-3))
        ax_p.set_xlim(-0.5, max(self.n_new - 0.5, 0.5))
        ax_p.set_xlabel("generation step", fontsize=8)
        ax_p.set_ylabel("P(<img>)", fontsize=8)
        ax_p.tick_params(labelsize=7)
        ax_p.legend(fontsize=7, loc="upper right")
        if self.n_new:
            ax_p.set_title(self.describe_step(), fontsize=8, wrap=True)

    def _html_tokens(self) -> str:
        spans = []
        sel = self.prompt_length + self.step
        for i, (tok, kind) in enumerate(zip(self.tokens, self.classes)):
            colour = TOKEN_CLASSES[kind]
            fg = "white" if kind in ("boi", "eoi") else "black"
            border = "2px solid black" if i == sel else "1px solid #fff"
            fade = "opacity:0.5;" if i < self.prompt_length else ""
            spans.append(f"<span title='{i}: {kind}' style='background:{colour};color:{fg};border:{border};"
                         f"{fade}padding:0 2px;margin:1px;font-family:monospace;font-size:11px'>"
                         f"{html.escape(tok)}</span>")
        return "<div style='line-height:1.9'>" + "".join(spans) + "</div>"

    def _build_widget(self):
        import ipywidgets as W

        self._html = W.HTML()
        self._info = W.HTML()
        return W.VBox([self._html, self.controls["step"], self._info, self._picture])

    def _update_panels(self) -> None:
        self._html.value = self._html_tokens()
        self._info.value = f"<code>{html.escape(self.describe_step())}</code>" if self.n_new else ""


def _last_run(t, name: str) -> torch.Tensor:
    pieces = t.pieces(name)[-1]
    return torch.cat(pieces, dim=1) if len(pieces) > 1 else pieces[0]


# --------------------------------------------------------------------------- the two arms

class _Arm:
    """What the token timeline and the BOI explorer ask of a model, one subclass per design.

    Words: ``name``, ``kinds`` (token kinds the timeline's summary counts), ``legend``, ``modes`` /
    ``mode_label`` / ``mode_tooltips`` (the BOI explorer's decoding toggle), ``picture`` (a picture's title).
    Methods: ``check_prompt``, ``timeline_prompt`` and ``timeline_run`` (ids, prompt length and one decision
    dict per new token), ``classify``, ``processor_share`` and ``explain`` (the timeline's words for the
    processor), ``check_explorer``, ``generate`` and ``n_new`` (the explorer's Generate button)."""

    def __init__(self, model):
        self.model = model


class _SeedXArm(_Arm):
    """A :class:`~seedx_lab.model.SeedX` (Type B3): a forced block of 64 fixed query tokens, the
    ``"faithful"`` / ``"strict"`` processor, the de-tokenizer. ``model`` may be None for a view read from a
    finished trace (only the words are needed then)."""

    name = "SEED-X (Type B3)"
    kinds = ("text", "boi", "image", "eoi")               # what the timeline's summary counts
    legend = ("text", "special", "boi", "image", "eoi", "patch")
    modes = ("faithful", "strict")                         # the BOI explorer's toggle
    mode_label = "blocking"
    mode_tooltips = ("published: blocked tokens set to 0.0", "fixed: blocked tokens set to -inf")
    picture = "image {k}"

    def check_prompt(self, prompt) -> str:
        return self.model._check_user_text(prompt, "prompt", allow_trailing_boi=True)

    def timeline_prompt(self, prompt, caption, max_new_tokens) -> tuple[str, int]:
        if caption is not None:
            return (T.generation_prompt(self.model._check_user_text(caption, "caption")),
                    self.model.lvlm.num_img_tokens + 1)
        return self.check_prompt(prompt), max_new_tokens

    def timeline_run(self, ids, max_new_tokens, processor_mode, kwargs) -> tuple[list[int], int, list[dict]]:
        """Greedy (or ``kwargs``) ``lvlm.generate`` under a trace of the processor's decisions."""
        from ..model import _check_decoding
        from .trace import trace as make_trace

        processor_mode = "faithful" if processor_mode is None else processor_mode
        _check_decoding(processor_mode, kwargs)
        tok = self.model.tokenizer
        with make_trace(self.model, capture=["processor.decisions"]) as t:
            out = self.model.lvlm.generate(ids, max_new_tokens=max_new_tokens, processor_mode=processor_mode,
                                           eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kwargs)
        decisions = [d for d in t["processor.decisions"] if d["row"] == 0]
        return out.sequences[0].tolist()[: out.prompt_length + len(decisions)], out.prompt_length, decisions

    def classify(self, ids) -> list[str]:
        return classify_tokens(ids, self.model.tokenizer, self.model.token_ids)

    @staticmethod
    def processor_share(view) -> str:
        return f"{sum(view.forced)} forced by the processor"

    @staticmethod
    def explain(d: dict) -> str:
        if d["forced"]:
            return (f"state {d['state']}, block index {d['block_index']}: forced {d['forced_token']} by "
                    f"raising its score {d['overridden_score']:.3f} to row max + 10")
        return f"state outside: blocked tokens set to 0.0 / -inf (their best raw score was {d['overridden_score']:.3f})"

    def check_explorer(self, max_new_tokens, max_images, num_inference_steps, seed) -> None:
        from .. import validate as V

        V.positive_int("max_new_tokens", max_new_tokens)
        V.integer("max_images", max_images, 0, 1_000_000)
        self.model._check_drawing(num_inference_steps, None, seed)

    def generate(self, prompt, mode, max_new_tokens, max_images, num_inference_steps, seed):
        return self.model.generate(prompt, max_new_tokens=max_new_tokens, max_images=max_images,
                                   processor_mode=mode, num_inference_steps=num_inference_steps, seed=seed)

    @staticmethod
    def n_new(result) -> int:
        return len(result.output.new_tokens[0])


class _TypeAArm(_Arm):
    """A :class:`~seedx_lab.typea.model.ChameleonTiny` (Type A): ``<img>``, N code tokens the
    model *chooses* (the processor only restricts them to the codebook) and a forced ``</img>``; decoding
    greedy or sampled; pictures drawn from the codes by the VQ decoder."""

    name = "Type A (ChameleonTiny)"
    kinds = ("text", "boi", "code", "eoi")
    legend = ("text", "special", "boi", "code", "eoi")
    modes = ("greedy", "sampled")
    mode_label = "codes"
    mode_tooltips = ("the argmax at every step", "drawn from softmax(logits), seeded")
    picture = "image {k} (VQ decoder)"
    decoding = ("sample", "temperature", "top_k", "seed")     # what generate_ids takes

    def check_prompt(self, prompt) -> str:
        return self.model._check_user_text(prompt, "prompt")

    def timeline_prompt(self, prompt, caption, max_new_tokens) -> tuple[str, int]:
        if caption is not None:
            return T.generation_prompt(self.model._check_user_text(caption, "caption")), self.model.num_codes + 1
        trailing = isinstance(prompt, str) and prompt.rstrip().endswith(T.BOI_TOKEN)
        body = prompt.rstrip()[: -len(T.BOI_TOKEN)] if trailing else prompt     # a trailing <img> opens a block
        self.model._check_user_text(body, "prompt", allow_empty=trailing)
        return prompt, max_new_tokens

    def timeline_run(self, ids, max_new_tokens, processor_mode, kwargs) -> tuple[list[int], int, list[dict]]:
        """``model.generate_ids`` (greedy, or sampled with ``kwargs``) with its processor recorded."""
        from .. import validate as V

        if processor_mode is not None:
            raise ValueError("processor_mode is SeedX's ('faithful' / 'strict'); the Type-A processor has one "
                             "mode (bans are -inf): leave it out, and pass sample=True to sample the codes")
        unknown = sorted(set(kwargs) - set(self.decoding))
        if unknown:
            raise ValueError(f"unknown decoding option(s) {unknown} for a Type-A model; it takes {list(self.decoding)}")
        V.flag("sample", kwargs.get("sample", False))
        V.number("temperature", kwargs.get("temperature", 1.0), low=0.0, low_open=True)
        V.positive_int("top_k", kwargs.get("top_k"), allow_none=True)
        V.seed("seed", kwargs.get("seed"))
        with _Recording(self.model) as made:
            new = self.model.generate_ids(ids, max_new_tokens, **kwargs)
        decisions = [d for rec in made for d in rec.decisions]
        T_ = ids.shape[1]
        return (ids[0].tolist() + new[0].tolist())[: T_ + len(decisions)], T_, decisions

    def classify(self, ids) -> list[str]:
        return classify_tokens(ids, self.model.tokenizer, self.model.token_ids, code_ids=self.model.code_ids)

    @staticmethod
    def processor_share(view) -> str:
        inside = sum(d["state"] == "inside" for d in view.decisions)
        return f"{inside} restricted to the codebook, {sum(view.forced)} forced by the processor"

    def explain(self, d: dict) -> str:
        o = d["overridden_score"]
        if d["state"] == "closing":
            return (f"state closing, {d['block_index']} codes written: forced {d['forced_token']}, the only "
                    f"token left (its raw score was {o:.3f})")
        if d["state"] == "inside":
            return (f"state inside, code {d['block_index'] + 1} of {self.model.num_codes}: only the "
                    f"{d['allowed']} code tokens allowed, the model picks which (the rest set to -inf; their best "
                    f"raw score was {o:.3f})")
        boi = "" if d["boi_allowed"] else "; <img> banned too (no room left for a whole block)"
        return f"state outside: code tokens and </img> set to -inf (their best raw score was {o:.3f}){boi}"

    def check_explorer(self, max_new_tokens, max_images, num_inference_steps, seed) -> None:
        from .. import validate as V

        V.positive_int("max_new_tokens", max_new_tokens)
        V.integer("max_images", max_images, 0, 1_000_000)
        V.positive_int("num_inference_steps", num_inference_steps, allow_none=True)   # accepted, unused: no diffusion
        V.seed("seed", seed)

    def generate(self, prompt, mode, max_new_tokens, max_images, num_inference_steps, seed):
        return self.model.generate(prompt, max_new_tokens=max_new_tokens, max_images=max_images,
                                   sample=mode == "sampled", seed=seed)

    @staticmethod
    def n_new(result) -> int:
        return len(result.new_ids)


def _arm(model, where: str) -> _Arm:
    """The adapter for ``model``: a :class:`~seedx_lab.model.SeedX` or a Type-A ``ChameleonTiny``."""
    from ..model import SeedX
    from ..typea.model import ChameleonTiny
    from ..validate import BadType, _show

    if isinstance(model, SeedX):
        return _SeedXArm(model)
    if isinstance(model, ChameleonTiny):
        return _TypeAArm(model)
    raise BadType(f"{where}: model must be a seedx_lab SeedX or a Type-A ChameleonTiny (e.g. "
                  f"seedx_lab.load('seedx-tiny') or seedx_lab.load('chameleon-tiny')), got {_show(model)}")


class _CodebookRecorder:
    """Wraps a Type-A :class:`~seedx_lab.typea.processor.CodebookBlockProcessor`: returns its scores unchanged
    and keeps, per call, row 0's decision as a dict like the SEED-X processor's ``record=True``: ``step, row,
    state, block_index`` (codes written in the open block), ``forced_id`` (``</img>`` when closing),
    ``overridden_score`` (the forced token's raw score, else the best raw score set to -inf), ``p_boi``
    (softmax of the raw scores), plus ``allowed`` (tokens left), ``forced`` (one token left) and ``boi_allowed``."""

    def __init__(self, proc):
        self.proc, self.decisions = proc, []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        from ..typea.processor import CLOSING, INSIDE

        out = self.proc(input_ids, scores)
        state, written = self.proc.state(input_ids[:1])
        st, raw, kept = int(state[0]), scores[0].float(), torch.isfinite(out[0])
        over = raw[self.proc.eoi] if st == CLOSING else raw[~kept].max()
        self.decisions.append(dict(
            step=len(self.decisions), row=0, state={CLOSING: "closing", INSIDE: "inside"}.get(st, "outside"),
            block_index=int(written[0]) if st in (INSIDE, CLOSING) else None,
            forced_id=self.proc.eoi if st == CLOSING else None, overridden_score=float(over),
            p_boi=float(raw.softmax(-1)[self.proc.boi]), allowed=int(kept.sum()), forced=int(kept.sum()) == 1,
            boi_allowed=bool(kept[self.proc.boi])))
        return out


class _Recording:
    """``with _Recording(model) as made:`` — while inside, ``model.processor(...)`` (what ``generate_ids``
    builds its processor with) returns a :class:`_CodebookRecorder`, each appended to ``made``."""

    def __init__(self, model):
        self.model, self.made = model, []

    def __enter__(self) -> list:
        build = self.model.processor

        def processor(*args, **kwargs):
            self.made.append(_CodebookRecorder(build(*args, **kwargs)))
            return self.made[-1]

        self.model.processor = processor          # an instance attribute, over the class's method
        return self.made

    def __exit__(self, *exc) -> None:
        del self.model.processor


def token_timeline(model=None, prompt: str | None = None, max_new_tokens: int = 40, *, caption: str | None = None,
                   trace=None, tokenizer=None, processor_mode: str | None = None, **generate_kwargs) -> TokenTimeline:
    """Colour-coded tokens of one generation and the processor's decision at every step.

    * ``token_timeline(model, prompt, max_new_tokens)``: greedy ``model.lvlm.generate`` on ``prompt``
      (``processor_mode``: ``"faithful"`` when None, or ``"strict"``);
    * ``token_timeline(model, caption="a red circle")``: the text-to-image path, prompt ``caption<img>`` and
      64 + 1 forced tokens (``generate_image`` without drawing);
    * ``token_timeline(model, trace=t)``: from a finished trace that captured ``processor.decisions`` and
      ``llm.token_ids`` (e.g. around ``model.generate_image``); the last generate call is shown.

    ``model`` may also be a Type-A ``ChameleonTiny`` (prompt or caption, no trace): ``model.generate_ids``
    writes the tokens, greedy or with ``sample=True`` (and ``temperature``, ``top_k``, ``seed``), its
    ``CodebookBlockProcessor`` recorded at every step; a caption gives ``<img>``, N chosen codes and the
    forced ``</img>``. Tokens are then classed text / ``<img>`` / code / ``</img>``.
    """
    tokenizer = tokenizer or getattr(model, "tokenizer", None)
    token_ids = getattr(model, "token_ids", None)
    if trace is None:
        if model is None:
            raise ValueError("give a model and a prompt (or caption=), or a finished trace=")
        arm = _arm(model, "token_timeline")
        if caption is not None and prompt is not None:
            raise ValueError("give either prompt or caption, not both")
        prompt, max_new_tokens = arm.timeline_prompt(prompt, caption, max_new_tokens)
        ids = torch.tensor([model.encode_ids(prompt)], device=model.device)
        seq, T_, decisions = arm.timeline_run(ids, max_new_tokens, processor_mode, generate_kwargs)
        classes = arm.classify(seq)
    else:
        from ..typea.model import ChameleonTiny

        if isinstance(model, ChameleonTiny):
            raise ValueError("a trace is taken on a SeedX; for a Type-A model give a prompt or caption=")
        arm = _SeedXArm(model)
        for name in ("processor.decisions", "llm.token_ids"):
            if name not in trace:
                raise KeyError(f"the trace did not capture {name!r}; capture=['processor.decisions', 'llm.token_ids']")
        decs = trace["processor.decisions"]
        if not decs:
            raise ValueError("the trace holds no processor decisions (no generate call ran inside it)")
        last = max(d["call"] for d in decs)
        decisions = [d for d in decs if d["call"] == last and d["row"] == 0]
        seq = _last_run(trace, "llm.token_ids")[0].tolist()
        T_ = len(seq) - len(decisions)
        classes = classify_tokens(seq, tokenizer, token_ids)
    if tokenizer is not None:
        toks = tokenizer.convert_ids_to_tokens(seq)
        id_to_token = lambda i: tokenizer.convert_ids_to_tokens([i])[0]   # noqa: E731
    else:
        toks = [str(i) for i in seq]
        id_to_token = None
    return TokenTimeline(seq, T_, decisions, toks, classes, id_to_token, arm)


# =========================================================================== 4. BOI explorer

class BoiExplorer(StageView):
    """P(``<img>``) along an editable prompt (final layer and logit lens), plus generation on demand.

    ``boi``: the :class:`~seedx_lab.probes.BoiTrace` of the current prompt; ``result``: the last
    :class:`~seedx_lab.model.InterleavedResult` (Type A: ``TypeAInterleaved``) of the Generate button (or
    :meth:`generate`), else None. ``mode``: SEED-X's blocking (``"faithful"`` / ``"strict"``) or Type A's
    decoding of the codes (``"greedy"`` / ``"sampled"``), see ``arm``.
    """

    _kind = "BoiExplorer"

    def __init__(self, model, prompt: str, max_new_tokens: int, max_images: int, num_inference_steps, seed):
        super().__init__()
        import ipywidgets as W

        self.model, self.arm = model, _arm(model, "boi_explorer")
        self.max_new_tokens, self.max_images = max_new_tokens, max_images
        self.num_inference_steps, self.seed = num_inference_steps, seed
        self.mode = self.arm.modes[0]
        self.result = None
        self.result_mode = None
        self.prompt = None
        self._compute(prompt)
        text = W.Text(value=prompt, description="prompt", continuous_update=False,
                      layout=W.Layout(width="95%"))
        self.controls["prompt"] = text
        text.observe(lambda ch: self._set_prompt(ch["new"]), names="value")
        self._observe("mode", W.ToggleButtons(options=list(self.arm.modes), value=self.mode,
                                              description=self.arm.mode_label, tooltips=list(self.arm.mode_tooltips)))
        button = W.Button(description="Generate", button_style="primary", icon="play")
        button.on_click(lambda _b: self.generate())
        self.controls["generate"] = button

    @property
    def p_boi(self) -> np.ndarray:
        """P(``<img>`` next) at every position of the prompt (final layer)."""
        return self.boi.p_final

    @property
    def p_lens(self) -> np.ndarray:
        return self.boi.p_lens

    def _compute(self, prompt: str) -> None:
        from .probes import boi_trace

        if not isinstance(prompt, str) or not prompt.strip():
            raise ValueError("prompt must be a non-empty string")
        self.arm.check_prompt(prompt)
        self.boi = boi_trace(self.model, prompt)
        self.prompt = prompt
        self.error = None

    def _set_prompt(self, prompt: str) -> None:
        try:
            self._compute(prompt)
        except (ValueError, KeyError) as e:       # e.g. an empty prompt: keep the last good one
            self.error = str(e)
        self.result = None
        self._changed()

    @torch.no_grad()
    def generate(self):
        """Run ``model.generate(prompt, processor_mode=mode)`` (Type A: ``sample=mode == "sampled"``); the
        result is shown and returned."""
        if self._widget is not None:
            self.controls["generate"].disabled = True
        try:
            self.result = self.arm.generate(self.prompt, self.mode, self.max_new_tokens, self.max_images,
                                            self.num_inference_steps, self.seed)
            self.result_mode = self.mode
        finally:
            if self._widget is not None:
                self.controls["generate"].disabled = False
        self._changed()
        return self.result

    def _summary(self) -> str:
        if self.result is None:
            gen = "none"
        else:
            n = self.arm.n_new(self.result)
            gen = f"{n} tokens, {len(self.result.images)} images ({self.result_mode})"
        return (f"BoiExplorer(tokens={len(self.boi.ids)}, layers={self.p_lens.shape[0] - 1}, mode={self.mode}, "
                f"generated={gen})")

    def _figsize(self):
        P = len(self.boi.tokens)
        h = 5.2 + (2.4 if self.result is not None else 0.0)
        return (max(7.0, min(0.22 * P + 3.0, 14.0)), h)

    def _draw(self, fig) -> None:
        b = self.boi
        P = len(b.tokens)
        n_img = len(self.result.images) if self.result is not None else 0
        if self.result is not None:
            sub = fig.subfigures(2, 1, height_ratios=[5.2, 2.4])
            top, bottom = sub[0], sub[1]
        else:
            top, bottom = fig, None
        ax1, ax2 = top.subplots(2, 1, sharex=True, height_ratios=[3, 1.5])
        im = ax1.imshow(b.p_lens, aspect="auto", cmap="magma", vmin=0.0,
                        vmax=max(float(b.p_lens.max()), 1e-6), interpolation="nearest")
        ax1.set_yticks(range(len(b.layer_names)), b.layer_names, fontsize=7)
        ax1.set_title("logit lens: P(<img> next) from each layer's residual stream", fontsize=9)
        top.colorbar(im, ax=ax1, fraction=0.03)
        x = np.arange(P)
        ax2.plot(x, b.p_final, color="tab:green", marker="o", ms=3, lw=1)
        best = int(np.argmax(b.p_final))
        ax2.annotate(f"max after '{b.tokens[best]}'", (best, b.p_final[best]), fontsize=7,
                     xytext=(0, 4), textcoords="offset points", ha="center")
        ax2.set_ylim(0, max(float(b.p_final.max()) * 1.3, 1e-3))
        ax2.set_ylabel("P(<img>)", fontsize=8)
        ax2.tick_params(labelsize=7)
        ax2.set_xticks(x, b.tokens, rotation=90, fontsize=7)
        if bottom is not None:
            k = max(n_img, 1)
            axes = np.atleast_1d(bottom.subplots(1, k + 1, width_ratios=[3.0] + [1.0] * k))
            ax_t = axes[0]
            ax_t.set_axis_off()
            text = self.result.text or "(no text)"
            if len(text) > 600:
                text = text[:600] + " …"
            ax_t.text(0, 1, f"generated ({self.result_mode}):\n" + _wrap(text, 70), va="top", ha="left",
                      fontsize=8, family="monospace", transform=ax_t.transAxes)
            for i in range(k):
                ax = axes[i + 1]
                if i < n_img:
                    ax.imshow(np.asarray(self.result.images[i]))
                    _style(ax, self.arm.picture.format(k=i + 1))
                else:
                    ax.set_axis_off()
                    ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=8, transform=ax.transAxes)

    def _build_widget(self):
        import ipywidgets as W

        self._out_text = W.HTML()
        self._out_images = W.HBox()
        self._status = W.HTML()
        return W.VBox([self.controls["prompt"], W.HBox([self.controls["mode"], self.controls["generate"]]),
                       self._status, self._picture, self._out_text, self._out_images])

    def _update_panels(self) -> None:
        import ipywidgets as W

        b = self.boi
        best = int(np.argmax(b.p_final))
        msg = f"{len(b.ids)} tokens; P(&lt;img&gt;) is highest after <b>{html.escape(b.tokens[best])}</b>"
        if self.error:
            msg = f"<span style='color:#b00'>{html.escape(self.error)}</span> (showing the last valid prompt)"
        self._status.value = msg
        if self.result is None:
            self._out_text.value, self._out_images.children = "", ()
            return
        self._out_text.value = f"<pre style='white-space:pre-wrap'>{html.escape(self.result.text)}</pre>"
        pics = []
        for im in self.result.images:
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            pics.append(W.Image(value=buf.getvalue(), format="png", width=128, height=128))
        self._out_images.children = tuple(pics)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text


def boi_explorer(model, prompt: str, max_new_tokens: int = 60, max_images: int = 2,
                 num_inference_steps: int | None = None, seed: int | None = 0) -> BoiExplorer:
    """Edit a prompt and see where the model wants ``<img>`` (:func:`seedx_lab.probes.boi_trace`); toggle the
    blocking mode and press Generate to run ``model.generate(prompt, processor_mode=...)``.

    A Type-A ``ChameleonTiny`` works the same way: P(``<img>``) from its LLM's logits and logit lens, the
    toggle chooses greedy or sampled codes (``seed`` seeds the sampling), Generate runs
    ``model.generate(prompt, sample=...)`` whose pictures the VQ decoder draws from the codes
    (``num_inference_steps`` is accepted and unused there: no diffusion).

    Its values are checked as the model's ``generate`` checks them, before anything runs."""
    arm = _arm(model, "boi_explorer")
    prompt = arm.check_prompt(prompt)
    arm.check_explorer(max_new_tokens, max_images, num_inference_steps, seed)
    return BoiExplorer(model, prompt, max_new_tokens, max_images, num_inference_steps, seed)


# =========================================================================== 4b. activation patching

class PatchingExplorer(StageView):
    """Activation patching between two editable prompts of equal length.

    ``grid``: the :class:`~seedx_lab.probes.PatchingGrid` of the current pair; the chosen cell (``site``,
    ``position``) is patched alone and the model continues greedily: ``cell_p`` is P(``<img>``) at the last
    prompt position with that patch, ``cell_text`` the continuation.
    """

    _kind = "PatchingExplorer"

    def __init__(self, model, clean: str, corrupt: str, max_new_tokens: int):
        super().__init__()
        import ipywidgets as W

        self.model, self.max_new_tokens = model, max_new_tokens
        self.error, self._quiet = None, False
        self._compute(clean, corrupt)
        self.site, self.position, self.direction = len(self.grid.sites) - 1, len(self.grid.clean_ids) - 1, "denoise"
        self._cell()
        for name, value in (("clean", clean), ("corrupt", corrupt)):
            box = W.Text(value=value, description=name, continuous_update=False, layout=W.Layout(width="95%"))
            self.controls[name] = box
            box.observe(lambda ch: None if self._quiet else self._set_prompts(), names="value")
        self._observe("site", W.Dropdown(options=[(s, i) for i, s in enumerate(self.grid.sites)], value=self.site,
                                         description="site"))
        self._observe("position", W.IntSlider(value=self.position, min=0, max=len(self.grid.clean_ids) - 1,
                                              description="position", continuous_update=False))
        self._observe("direction", W.ToggleButtons(options=["denoise", "noise"], value="denoise",
                                                   description="patch", tooltips=["clean into corrupt",
                                                                                  "corrupt into clean"]))

    def _compute(self, clean: str, corrupt: str) -> None:
        from .probes import activation_patching

        self.grid = activation_patching(self.model, clean, corrupt)
        self.clean, self.corrupt = clean, corrupt

    def _cell(self) -> None:
        from .probes import patched_continuation

        self.position = min(self.position, len(self.grid.clean_ids) - 1)
        self.cell_p, self.cell_text = patched_continuation(self.model, self.clean, self.corrupt, self.site,
                                                           self.position, self.max_new_tokens, self.direction)

    def _set_prompts(self) -> None:
        try:
            self._compute(self.controls["clean"].value, self.controls["corrupt"].value)
            self.error = None
            self.controls["position"].max = len(self.grid.clean_ids) - 1
        except ValueError as e:                  # e.g. different lengths: keep the last good pair
            self.error = str(e)
        self._changed()

    def _changed(self) -> None:
        if self.error is None:
            self._cell()
        super()._changed()

    def set(self, **values) -> "PatchingExplorer":
        """As :meth:`StageView.set`; ``clean`` and ``corrupt`` given together are applied as one pair."""
        pair = {k: values.pop(k) for k in ("clean", "corrupt") if k in values}
        if pair:
            self._quiet = True
            try:
                for k, v in pair.items():
                    self.controls[k].value = v
            finally:
                self._quiet = False
            self._set_prompts()
        return super().set(**values)

    def _summary(self) -> str:
        g = self.grid
        return (f"PatchingExplorer(tokens={len(g.clean_ids)}, sites={len(g.sites)}, site={g.sites[self.site]}, "
                f"position={self.position}, direction={self.direction})")

    def _figsize(self):
        return (max(7.0, min(0.32 * len(self.grid.clean_ids) + 3, 16.0)), 6.2)

    def _draw(self, fig) -> None:
        g = self.grid
        grid = g.denoise if self.direction == "denoise" else g.noise
        ax, axt = fig.subplots(2, 1, height_ratios=[3, 1])
        im = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
        ax.add_patch(__import__("matplotlib.patches", fromlist=["Rectangle"]).Rectangle(
            (self.position - 0.5, self.site - 0.5), 1, 1, fill=False, ec="black", lw=2))
        ax.set_yticks(range(len(g.sites)), g.sites, fontsize=7)
        labels = [a if a == b else f"{a}/{b}" for a, b in zip(g.clean_tokens, g.corrupt_tokens)]
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        what = "clean into corrupt" if self.direction == "denoise" else "corrupt into clean"
        ax.set_title(f"{what}: (patched - corrupt) / (clean - corrupt) of logit(<img>)", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.025)
        axt.set_axis_off()
        msg = (f"cell {g.sites[self.site]}, position {self.position} ('{g.clean_tokens[self.position]}'): "
               f"P(<img>) = {self.cell_p:.3f}\ncontinuation: {self.cell_text[:160]}")
        if self.error:
            msg = "error: " + self.error + "\n(showing the last valid pair)\n" + msg
        axt.text(0, 1, _wrap(msg, 110), va="top", ha="left", fontsize=8, family="monospace", transform=axt.transAxes)

    def _build_widget(self):
        import ipywidgets as W

        return W.VBox([self.controls["clean"], self.controls["corrupt"],
                       W.HBox([self.controls["site"], self.controls["position"]]), self.controls["direction"],
                       self._picture])


def patching_explorer(model, clean: str, corrupt: str, max_new_tokens: int = 16) -> PatchingExplorer:
    """Two editable prompts of equal token length (``clean`` triggers a picture, ``corrupt`` does not),
    their layer x position patching map (:func:`seedx_lab.probes.activation_patching`), and one chosen
    cell patched alone: P(``<img>``) and the greedy continuation."""
    return PatchingExplorer(model, clean, corrupt, max_new_tokens)


# =========================================================================== 5. diffusion

class DiffusionScrubber(StageView):
    """The de-tokenizer's denoising, one step at a time.

    ``latents [steps, C, h, w]`` after each step; ``decoded [steps, H, W, 3]`` (uint8) their VAE
    decodings; ``x0 [steps, H, W, 3]`` or None: the decoded clean-latent prediction of each step
    (Euler without churn, recovered from the latents after the step and the UNet output, for epsilon
    and v prediction); ``timesteps [steps]``.
    """

    _kind = "DiffusionScrubber"

    def __init__(self, latents, decoded, x0, timesteps, sigmas, caption, image=None):
        super().__init__()
        import ipywidgets as W

        self.latents, self.decoded, self.x0 = latents, decoded, x0
        self.timesteps, self.sigmas, self.caption, self.image = timesteps, sigmas, caption, image
        self.n_steps = len(decoded)
        self.step = self.n_steps - 1
        self._observe("step", W.IntSlider(value=self.step, min=0, max=self.n_steps - 1, description="step",
                                          continuous_update=True))

    def _summary(self) -> str:
        h, w = self.decoded.shape[1:3]
        return (f"DiffusionScrubber(steps={self.n_steps}, step={self.step}, image={w}x{h}, "
                f"x0={'yes' if self.x0 is not None else 'no'})")

    def _figsize(self):
        return (9.0 if self.x0 is not None else 6.0, 3.8)

    def _draw(self, fig) -> None:
        k = self.step
        n = 3 if self.x0 is not None else 2
        axes = fig.subplots(1, n)
        t = float(self.timesteps[k])
        axes[0].imshow(self.decoded[k], interpolation="nearest")
        _style(axes[0], f"latents after step {k + 1}/{self.n_steps}\n(t={t:.0f}, sigma {self.sigmas[k + 1]:.3f})")
        if self.x0 is not None:
            axes[1].imshow(self.x0[k], interpolation="nearest")
            _style(axes[1], f"predicted clean image at step {k + 1}\n(the scheduler's pred_original_sample)")
        final = _as_uint8(self.image) if self.image is not None else self.decoded[-1]
        axes[-1].imshow(final, interpolation="nearest")
        _style(axes[-1], "final image")
        if self.caption:
            fig.suptitle(f"'{self.caption}'", fontsize=9)

    def _build_widget(self):
        import ipywidgets as W

        play = W.Play(value=self.step, min=0, max=self.n_steps - 1, interval=300)
        W.jslink((play, "value"), (self.controls["step"], "value"))
        return W.VBox([W.HBox([play, self.controls["step"]]), self._picture])


def _step_tensor(t, name: str) -> torch.Tensor:
    v = t[name]
    if isinstance(v, list):
        v = v[-1]
    return v


@torch.no_grad()
def diffusion_scrubber(model, caption: str | None = None, num_inference_steps: int | None = None, seed: int | None = 0,
                       guidance_scale: float | None = None, *, trace=None) -> DiffusionScrubber:
    """Run ``model.generate_image(caption)`` under a trace of ``detok.step.*``, decode every step's latents
    with the VAE and scrub through them; the "predicted clean image" panel decodes the Euler scheduler's
    own ``pred_original_sample`` of each step. Or pass a finished ``trace`` that captured
    ``detok.step.*.latents`` and ``.timestep`` (one image; the x0 panel needs
    ``detok.step.*.pred_original_sample``); ``model`` supplies the VAE and scheduler."""
    from diffusers import EulerDiscreteScheduler

    from .trace import trace as make_trace

    image = None
    if trace is None:
        if caption is None:
            raise ValueError("give a caption (or a finished trace=)")
        with make_trace(model, capture=["detok.step.*"]) as t:
            res = model.generate_image(caption, num_inference_steps=num_inference_steps,
                                       guidance_scale=guidance_scale, seed=seed)
        image = res.image
    else:
        t = trace
    steps = sorted({int(m.group(1)) for k in t.keys() if (m := re.fullmatch(r"detok\.step\.(\d+)\.latents", k))})
    if not steps:
        raise KeyError("the trace did not capture detok.step.*.latents")
    if steps != list(range(len(steps))):
        raise ValueError(f"diffusion steps captured are not 0..n-1: {steps[:5]}…")
    latents = torch.stack([_step_tensor(t, f"detok.step.{k}.latents")[0] for k in steps]).float()   # [S, C, h, w]
    detok = model.detok
    sched = EulerDiscreteScheduler.from_config(detok.scheduler.config)
    sched.set_timesteps(len(steps))
    sigmas = sched.sigmas.double().numpy()                                                          # [S + 1]
    timesteps = sched.timesteps.double().numpy()
    if all(f"detok.step.{k}.timestep" in t for k in steps):
        seen = np.array([float(_step_tensor(t, f"detok.step.{k}.timestep").reshape(-1)[0]) for k in steps])
        if not np.allclose(seen, timesteps):
            raise ValueError("the captured timesteps do not match an Euler schedule of this length")
    decoded = _decode(detok, latents)
    x0 = None
    if all(f"detok.step.{k}.pred_original_sample" in t for k in steps):
        x0 = _decode(detok, torch.stack([_step_tensor(t, f"detok.step.{k}.pred_original_sample")[0]
                                         for k in steps]).float())
    return DiffusionScrubber(latents, decoded, x0, timesteps, sigmas, caption, image)


def _decode(detok, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents [S, C, h, w] -> uint8 [S, H, W, 3], rounded as the de-tokenizer rounds its PIL output."""
    out = []
    for chunk in latents.split(16):
        img = detok.decode_latents(chunk.to(detok.device))                     # [n, 3, H, W] in [0, 1]
        out.append((img.permute(0, 2, 3, 1).cpu().numpy() * 255).round().astype(np.uint8))
    return np.concatenate(out)
