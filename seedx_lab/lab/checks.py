"""Graders for the workbook's exercises, and a way to run a learner's piece inside seedx-tiny.

Each ``check_*`` runs the learner's function and the package's own stage on the same random and
edge-case inputs. On the first difference it raises :class:`CheckFailed` whose message says, in plain
words, which input, what shape or value was expected and what came back (first mismatching element,
max abs difference; for the forcing rule, the state of the row it got wrong). When all cases agree it
prints one line and returns ``None``.

:func:`swap` puts learner functions in place of the stages of a loaded :class:`~seedx_lab.model.SeedX`
for the time of a ``with`` block; :func:`draw_with` and :func:`describe_with` run the model that way on a
held-out sample and judge the result (pixel judge for pictures, the world's own description for text).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from contextlib import contextmanager

import torch

__all__ = ["CheckFailed", "check_grid_choice", "check_tiling", "check_resampler_forward", "check_inputs_embeds",
           "check_forcing_rule", "check_hidden_state_pick", "check_image_features", "check_euler_loop",
           "swap", "draw_with", "describe_with", "tiny_model"]


class CheckFailed(AssertionError):
    """A learner's function disagrees with the reference; the message says where and how."""


def _ok(what: str, n: int) -> None:
    print(f"✓ {what}: matches the reference on {n} case(s)")


def _call(name: str, fn, *args, **kwargs):
    """Call the learner's ``fn``; turn its own exception into a readable :class:`CheckFailed`."""
    try:
        return fn(*args, **kwargs)
    except CheckFailed:
        raise
    except NotImplementedError as e:
        raise CheckFailed(f"{name}: your function is not written yet ({e}); fill in the exercise cell above") from None
    except Exception as e:  # noqa: BLE001 - any learner error becomes a grader message
        raise CheckFailed(f"{name}: your function raised {type(e).__name__}: {e}") from e


def _fmt(v) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def tensor_difference(got, want, atol: float = 1e-5, what: str = "output") -> str | None:
    """None when ``got`` equals ``want`` within ``atol`` (infinities must match exactly); otherwise a
    sentence naming the shape difference, or the first mismatching element and the max abs difference."""
    if not isinstance(got, torch.Tensor):
        return f"{what} should be a torch.Tensor of shape {tuple(want.shape)}, got {type(got).__name__}"
    if tuple(got.shape) != tuple(want.shape):
        return f"{what} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    same_inf = (g == w) & torch.isinf(w)
    diff = torch.where(same_inf, torch.zeros_like(g), (g - w).abs())
    diff = torch.where(torch.isnan(g) | torch.isnan(w), torch.full_like(g, math.inf), diff)
    bad = diff > atol
    if not bool(bad.any()):
        return None
    idx = tuple(int(i) for i in bad.nonzero()[0])
    finite = diff[~torch.isinf(diff)]
    mx = float(finite.max()) if finite.numel() else math.inf
    return (f"{what} differs at index {list(idx)}: got {_fmt(float(g[idx]))}, expected {_fmt(float(w[idx]))}; "
            f"{int(bad.sum())} of {bad.numel()} elements differ by more than {atol:g} "
            f"(max abs diff among finite ones {mx:.3g})")


@functools.lru_cache(maxsize=None)
def tiny_model(device: str = "cpu"):
    """seedx-tiny, loaded once per process (graders reuse it)."""
    from ..loading import load

    return load("seedx-tiny", device=device).eval()


# --------------------------------------------------------------------------- 01 any-res

def _grid_cases():
    import random

    rng = random.Random(0)
    edge = [(1, 1), (448, 448), (896, 448), (448, 896), (451, 300), (300, 451), (2000, 100), (100, 2000),
            (1344, 448), (448, 1792), (900, 900), (1000, 980), (640, 480), (64, 64), (128, 64), (65, 200)]
    cases = [(s, 448) for s in edge] + [(s, 64) for s in edge[:6]]
    cases += [((rng.randint(20, 2600), rng.randint(20, 2600)), rng.choice((448, 64))) for _ in range(150)]
    return cases


def check_grid_choice(fn) -> None:
    """``fn(size, base) -> (width, height)``: the resolution SEED-X keeps for an image of ``size`` (w, h)."""
    from ..anyres import choose_resolution

    cases = _grid_cases()
    for size, base in cases:
        d = choose_resolution(size, base)
        got = _call("grid choice", fn, size, base)
        try:
            got_t = tuple(int(v) for v in got)
        except Exception:  # noqa: BLE001
            raise CheckFailed(f"grid choice: return a (width, height) pair, got {got!r} for size {size}") from None
        if got_t != d.chosen:
            area = lambda r: r[0] * r[1]  # noqa: E731
            raise CheckFailed(
                f"grid choice: for an image of {size[0]}x{size[1]} (base {base}) you chose {got_t}, the reference "
                f"keeps {d.chosen}. The LLaVA-NeXT rule picks {d.llava_choice} (area {area(d.llava_choice)}), the "
                f"aspect rule {d.aspect_choice} (area {area(d.aspect_choice)}); SEED-X keeps the smaller area, "
                "LLaVA-NeXT's on a tie, and within a rule the earlier candidate wins a tie")
    _ok("grid choice", len(cases))


def check_tiling(fn) -> None:
    """``fn(image, base) -> (pixels [n, 3, base, base], positions [n, 2])`` as :func:`seedx_lab.anyres.tile_image`."""
    import numpy as np
    from PIL import Image

    from ..anyres import tile_image

    rng = np.random.default_rng(0)
    sizes = [(64, 64), (150, 60), (60, 150), (200, 200), (37, 250), (130, 70)]
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
    for im in images:
        ref = tile_image(im, base=64)
        got = _call("tiling", fn, im, 64)
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise CheckFailed(f"tiling: return (pixels, positions), got {type(got).__name__}")
        C, R = ref.decision.grid
        where = f"for a {im.width}x{im.height} image (grid {C}x{R}, {C * R} tiles + the global view)"
        msg = tensor_difference(got[0], ref.pixels, 1e-5, "pixels")
        if msg:
            if "index" in msg:
                i = int(msg.split("index [")[1].split(",")[0])
                msg += " — that is the global view" if i == C * R else f" — that is tile {i} (row {i // C}, column {i % C})"
            raise CheckFailed(f"tiling {where}: {msg}")
        msg = tensor_difference(got[1], ref.positions, 1e-6, "positions")
        if msg:
            raise CheckFailed(f"tiling {where}: {msg}. Expected positions {ref.positions.tolist()}")
    _ok("tiling", len(images))


# --------------------------------------------------------------------------- 02 resampler

def _random_resamplers():
    from ..resampler import Resampler, ResamplerConfig

    torch.manual_seed(0)
    out = []
    for cfg, K in [(ResamplerConfig(grid_size=2, embed_dim=16, num_heads=2, kv_dim=8), 16),
                   (ResamplerConfig(grid_size=3, embed_dim=16, num_heads=4, kv_dim=None), 4),
                   (ResamplerConfig(grid_size=2, embed_dim=32, num_heads=4, kv_dim=12, locality=5.0, local_heads=1), 9),
                   (ResamplerConfig(grid_size=2, embed_dim=16, num_heads=2, kv_dim=8, locality=3.0), 16)]:
        m = Resampler(cfg).eval()
        with torch.no_grad():          # every parameter random, so a forgotten bias or norm shows
            for p in m.parameters():
                p.normal_(0, 0.5)
        out.append((m, torch.randn(2, K, cfg.kv_dim)))
    return out


def check_resampler_forward(fn) -> None:
    """``fn(module, x) -> [B, Q, E]``: the forward of a :class:`seedx_lab.resampler.Resampler` ``module``."""
    cases = _random_resamplers()
    model = tiny_model()
    g = torch.Generator().manual_seed(1)
    cases += [(model.lvlm.input_resampler, torch.randn(3, 256, model.lvlm.input_resampler.config.kv_dim, generator=g)),
              (model.lvlm.output_resampler, torch.randn(1, 64, model.lvlm.output_resampler.config.kv_dim, generator=g))]
    for m, x in cases:
        c = m.config
        with torch.no_grad():
            want = m(x)
            got = _call("resampler forward", fn, m, x)
        msg = tensor_difference(got, want, 1e-4, "output")
        if msg:
            extra = (f", place bias locality={c.locality} on the first {c.local_heads or c.num_heads} head(s)"
                     if c.locality else "")
            raise CheckFailed(f"resampler forward with {c.num_queries} queries, width {c.embed_dim}, {c.num_heads} "
                              f"heads, kv_dim {c.kv_dim}{extra}, input {tuple(x.shape)}: {msg}")
    _ok("resampler forward", len(cases))


# --------------------------------------------------------------------------- 03/04 inputs_embeds

def check_inputs_embeds(fn) -> None:
    """``fn(lvlm, input_ids, image_features, ids_cmp_mask, patch_positions) -> [B, T, D]`` as ``lvlm.embed``."""
    from ..shapeworld import world

    model = tiny_model()
    lvlm = model.lvlm
    cases = []
    for seed in (0, 3):
        s = world.comprehension_sample(seed, "test")
        ids, feats, pos, cmp = model.comprehension_inputs(s.image, s.question)
        cases.append((f"a {s.image.width}x{s.image.height} image ({feats.shape[0]} views) and a question",
                      ids, feats, cmp, pos))
    ids = cases[0][1]
    g = torch.Generator().manual_seed(2)
    cases.append(("random features, no tile positions", ids, torch.randn_like(cases[0][2]), cases[0][3], None))
    cases.append(("a prompt without images", torch.tensor([model.encode_ids("a red circle .")]), None, None, None))
    for what, ids, feats, cmp, pos in cases:
        with torch.no_grad():
            want = lvlm.embed(ids, feats, cmp, pos)
            got = _call("inputs_embeds", fn, lvlm, ids, feats, cmp, pos)
        msg = tensor_difference(got, want, 1e-5, "inputs_embeds")
        if msg:
            if "index [" in msg:
                b, t = (int(v) for v in msg.split("index [")[1].split("]")[0].split(",")[:2])
                tok = model.tokenizer.convert_ids_to_tokens(int(ids[b, t]))
                kind = "an image slot" if cmp is not None and bool(cmp[b, t]) else "a text token"
                msg += f" — position {t} holds {tok!r} ({kind})"
            raise CheckFailed(f"inputs_embeds for {what}: {msg}")
    _ok("inputs_embeds", len(cases))


# --------------------------------------------------------------------------- 05 forcing rule

def _toy_ids():
    from ..tokens import ImageTokenIds

    return ImageTokenIds(boi=10, eoi=11, bop=12, eop=13, img=(14, 15, 16, 17))


def _token_name(tid, i: int) -> str:
    names = {tid.boi: "<img>", tid.eoi: "</img>", tid.bop: "<patch>", tid.eop: "</patch>"}
    names.update({t: f"<img_{k:05d}>" for k, t in enumerate(tid.img)})
    return names.get(i, f"text#{i}")


def _forcing_cases():
    tid = _toy_ids()
    b, e, im = tid.boi, tid.eoi, tid.img
    rows = [
        ("text only", [1, 2, 3]),
        ("just after <img>", [1, b]),
        ("two image tokens into a block", [b, im[0], im[1]]),
        ("all image tokens written, </img> due", [b, *im]),
        ("just after </img>", [b, *im, e, 4]),
        ("right after </img>", [b, *im, e]),
        ("a stray image token outside any block", [1, 2, im[1]]),
        ("a block that skipped a token", [b, im[0], im[2]]),
        ("an image token after text, no <img>", [5, im[3]]),
        ("a <patch> block", [tid.bop, im[0], im[1]]),
        ("<img> long ago, text since", [b, 3, 4]),
    ]
    g = torch.Generator().manual_seed(0)
    V = 20
    out = []
    for name, seq in rows:
        for kind in ("random", "negative"):
            s = torch.randn(1, V, generator=g)
            if kind == "negative":      # every score below zero: the published 0.0 "ban" then favours blocked ids
                s = -s.abs() - 1.0
            out.append((f"{name} ({'scores random' if kind == 'random' else 'every score negative'})",
                        tid, torch.tensor([seq]), s))
    # random sequences, batched
    ids = [b, e, *im, 1, 2, 3, tid.bop]
    seqs = torch.tensor(ids)[torch.randint(len(ids), (16, 6), generator=g)]
    out.append(("16 random rows in one batch", tid, seqs, torch.randn(16, V, generator=g) * 3))
    return out


def check_forcing_rule(fn, mode: str = "faithful") -> None:
    """``fn(input_ids [B, L], scores [B, V], token_ids, mode) -> scores [B, V]`` as
    :class:`seedx_lab.generation.AutoImageTokenGenerationProcessor` (``num_img_gen_tokens = len(token_ids.img)``)."""
    from ..generation import STATE_NAMES, AutoImageTokenGenerationProcessor

    if mode not in ("faithful", "strict"):
        raise ValueError(f"mode must be 'faithful' or 'strict', got {mode!r}")
    cases = _forcing_cases()
    model = tiny_model()
    tid64 = model.token_ids
    seq = [model.tokenizer.bos_token_id, 5, 6, tid64.boi, *tid64.img[:10]]
    cases.append(("seedx-tiny's 64-token block, 10 tokens in", tid64, torch.tensor([seq]),
                  torch.randn(1, len(model.tokenizer), generator=torch.Generator().manual_seed(3))))
    for what, tid, ids, scores in cases:
        proc = AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=len(tid.img), mode=mode)
        want = proc(ids, scores.clone())
        got = _call(f"forcing rule ({mode})", fn, ids, scores.clone(), tid, mode)
        msg = tensor_difference(got, want, 1e-6, "scores")
        if msg is None:
            continue
        st = proc.states(ids)
        row = 0
        if isinstance(got, torch.Tensor) and got.shape == want.shape:
            bad = ((got.double() - want.double()).abs() > 1e-6) & ~((got == want) & torch.isinf(want))
            row = int(bad.any(-1).nonzero()[0])
            col = int(bad[row].nonzero()[0])
            msg = (f"column {col} ({_token_name(tid, col)}): got {_fmt(float(got[row, col]))}, expected "
                   f"{_fmt(float(want[row, col]))}")
        state = STATE_NAMES[int(st.state[row])]
        k = int(st.k[row])
        tail = " ".join(_token_name(tid, int(t)) for t in ids[row, -6:])
        reading = f"{state}" + (f", {k} image token(s) so far, forcing {_token_name(tid, int(st.forced_id[row]))}"
                                if state != "outside" else ", nothing forced, the block tokens get "
                                + ("-inf" if mode == "strict" else "0.0"))
        raise CheckFailed(f"forcing rule ({mode}), {what}: row {row} ends in [{tail}]; the reference reads its state "
                          f"as {reading}. Your scores differ at {msg}")
    _ok(f"forcing rule ({mode})", len(cases))


# --------------------------------------------------------------------------- 06 hidden-state pick, features

def _pick_cases():
    tid = _toy_ids()
    b, e, im = tid.boi, tid.eoi, tid.img
    rows = [
        ("one block after text", [1, 2, b, *im, e, 3]),
        ("two blocks", [b, *im, e, 1, b, *im, e]),
        ("a block cut short at the end", [1, b, *im[:2]]),
        ("a <patch> block then an <img> block", [tid.bop, *im, tid.eop, b, *im, e]),
        ("no block", [1, 2, 3]),
        ("the block's <img> was the last prompt token", [*im, e, 1, 2]),
        ("a block with a token too few", [b, *im[:3], e, 2]),
    ]
    return tid, rows


def _reference_pick(tokens, hidden, tid):
    from ..tokens import find_image_blocks

    n = len(tid.img)
    seq = tokens.tolist()
    # after generate_image the block's <img> closed the prompt: put it back in front to read the block
    lead = 1 if seq and seq[0] in tid.img else 0
    blocks = [blk for blk in find_image_blocks([tid.boi] * lead + seq, tid, expected_tokens=n)
              if blk.kind == "img" and blk.complete]
    starts = [blk.token_start - lead for blk in blocks]
    if not blocks:
        return hidden.new_zeros((0, n, hidden.shape[-1])), starts
    return torch.stack([hidden[s: s + n] for s in starts]), starts


def check_hidden_state_pick(fn) -> None:
    """``fn(tokens [N], hidden [N, D], token_ids) -> [n_blocks, n, D]``: for every complete ``<img>`` block,
    the last-layer hidden states at its ``n = len(token_ids.img)`` image-token positions (the n before ``</img>``)."""
    tid, rows = _pick_cases()
    for what, seq in rows:
        tokens = torch.tensor(seq)
        # column 0 of each hidden state is its position, so a wrong pick names the positions it took
        hidden = torch.cat([torch.arange(len(seq), dtype=torch.float32)[:, None], torch.randn(len(seq), 2)], dim=1)
        want, starts = _reference_pick(tokens, hidden, tid)
        got = _call("hidden-state pick", fn, tokens, hidden, tid)
        msg = tensor_difference(got, want, 0.0, "picked hidden states")
        if msg:
            spans = ", ".join(f"{s}..{s + len(tid.img) - 1}" for s in starts) or "none"
            took = ""
            if isinstance(got, torch.Tensor) and got.dim() == 3 and got.shape[-1] == 3:
                took = f"; you took positions {[[int(v) for v in blk[:, 0].tolist()] for blk in got]}"
            raise CheckFailed(f"hidden-state pick, {what} ({' '.join(_token_name(tid, t) for t in seq)}): {msg}. "
                              f"The reference takes positions {spans} (the image tokens of each complete "
                              f"<img> block, the last right before </img>){took}")
    _ok("hidden-state pick", len(rows))


def check_image_features(fn) -> None:
    """``fn(lvlm, tokens [N], hidden [N, D]) -> [n_blocks, 64, vit_dim]``: the output resampler applied to the
    picked hidden states, compared with the features ``lvlm.generate`` hands to the de-tokenizer."""
    from ..shapeworld import world

    model = tiny_model()
    n_cases = 0
    for seed in (0, 1):
        res = model.generate_image(world.caption_image_sample(seed, "test").caption, num_inference_steps=1)
        out = res.output
        want = torch.stack([img.features for img in out.images[0]])
        got = _call("image features", fn, model.lvlm, out.new_tokens[0], out.hidden[0])
        msg = tensor_difference(got, want, 1e-5, "features")
        if msg:
            raise CheckFailed(f"image features for the caption {res.prompt!r}: {msg}")
        n_cases += 1
    _ok("image features", n_cases)


# --------------------------------------------------------------------------- 06 Euler loop

def check_euler_loop(fn) -> None:
    """``fn(detok, features [B, 64, D], num_inference_steps, guidance_scale, generator) -> images [B, 3, H, W]``
    in [0, 1], as ``detok.sample(..., output_type="pt")``."""
    from ..shapeworld import world

    model = tiny_model()
    detok = model.detok
    feats = model.generate_image(world.caption_image_sample(0, "test").caption, num_inference_steps=1).features
    both = torch.stack([feats, feats.flip(0)])
    cases = [("1 image, 2 steps, no guidance", feats[None], 2, 1.0),
             ("2 images, 3 steps, guidance 3", both, 3, 3.0)]
    for what, f, steps, cfg in cases:
        want = detok.sample(f, steps, cfg, generator=torch.Generator().manual_seed(0), output_type="pt")
        with torch.no_grad():
            got = _call("Euler loop", fn, detok, f, steps, cfg, torch.Generator().manual_seed(0))
        msg = tensor_difference(got, want, 1e-4, "images")
        if msg:
            hint = " (no guidance here, so look at the step itself)" if cfg == 1.0 else \
                " (if the no-guidance case passed, look at how you mix the two branches)"
            raise CheckFailed(f"Euler loop, {what}: {msg}{hint}")
    _ok("Euler loop", len(cases))


# --------------------------------------------------------------------------- the piece inside the pipeline

class _LearnerProcessor:
    """Adapts ``fn(input_ids, scores, token_ids, mode)`` to the LogitsProcessor call ``(input_ids, scores)``."""

    def __init__(self, fn, token_ids, mode):
        self.fn, self.token_ids, self.mode = fn, token_ids, mode

    def __call__(self, input_ids, scores):
        return self.fn(input_ids, scores, self.token_ids, self.mode)


@contextmanager
def swap(model, *, tiling=None, resampler_forward=None, inputs_embeds=None, forcing_rule=None, hidden_state_pick=None,
         image_features=None, euler_loop=None):
    """Run ``model`` (a SeedX) with learner functions in place of its stages, restored on exit.

    ``tiling(image, base) -> (pixels, positions)``: the any-res tiler;
    ``resampler_forward(module, x)``: both LLM-side resamplers; ``inputs_embeds(lvlm, ids, feats, cmp, pos)``;
    ``forcing_rule(ids, scores, token_ids, mode)``: the processor (every token goes through it, the
    forced block included); ``hidden_state_pick(tokens, hidden, token_ids)`` and/or
    ``image_features(lvlm, tokens, hidden)``: the features handed to the de-tokenizer;
    ``euler_loop(detok, features, steps, guidance, generator)``: the sampler.
    """
    lvlm, detok = model.lvlm, model.detok
    patched: list[tuple[object, str]] = []
    originals: dict = {}

    def put(obj, name, value):
        originals[(id(obj), name)] = getattr(obj, name)
        setattr(obj, name, value)          # on an instance: shadows the class method until deleted
        patched.append((obj, name))

    try:
        if tiling is not None:
            from .. import model as model_module
            from ..anyres import Tiles
            from ..images import to_pil_rgb

            def learner_tile(image, base, device=None, dtype=None, **kw):
                pixels, positions = tiling(to_pil_rgb(image), base)
                return Tiles(pixels.to(device=device, dtype=dtype), positions.to(device=device, dtype=dtype), None, [])

            put(model_module, "tile_image", learner_tile)
        if resampler_forward is not None:
            for m in (lvlm.input_resampler, lvlm.output_resampler):
                put(m, "forward", lambda x, return_attn=False, m=m: resampler_forward(m, x))
        if inputs_embeds is not None:
            put(lvlm, "embed", lambda ids, image_features=None, ids_cmp_mask=None, patch_positions=None:
                inputs_embeds(lvlm, ids, image_features, ids_cmp_mask, patch_positions))
        if forcing_rule is not None or hidden_state_pick is not None or image_features is not None:
            generate = lvlm.generate

            def learner_generate(*args, processor_mode="faithful", **kw):
                if forcing_rule is not None:
                    kw.update(logits_processor=[_LearnerProcessor(forcing_rule, lvlm.token_ids, processor_mode)],
                              fast_forced_block=False)
                out = generate(*args, processor_mode=processor_mode, **kw)
                if hidden_state_pick is not None or image_features is not None:
                    for b, imgs in enumerate(out.images):
                        if not imgs:
                            continue
                        n = int((out.sequences[b] != kw.get("pad_token_id", 0)).sum()) - out.prompt_length
                        toks, hid = out.new_tokens[b], out.hidden[b]
                        if image_features is not None:
                            feats = image_features(lvlm, toks, hid)
                        else:
                            picked = hidden_state_pick(toks, hid, lvlm.token_ids)
                            feats = lvlm.output_resampler(picked.to(lvlm.output_resampler.query.dtype))
                        if len(feats) != len(imgs):
                            raise CheckFailed(f"your pick found {len(feats)} image block(s), the generation has "
                                              f"{len(imgs)} (row {b}, {n} new tokens)")
                        out.images[b] = [dataclasses.replace(img, features=f) for img, f in zip(imgs, feats)]
                return out

            put(lvlm, "generate", learner_generate)
        if euler_loop is not None:
            from ..detokenizer import _to_pil

            def learner_sample(features, num_inference_steps=None, guidance_scale=1.0, generator=None,
                               callback=None, output_type="pil", **kw):
                steps = num_inference_steps or detok.config.num_inference_steps
                images = euler_loop(detok, features, steps, guidance_scale, generator)
                return images if output_type == "pt" else _to_pil(images)

            put(detok, "sample", learner_sample)
        yield model
    finally:
        for obj, name in reversed(patched):
            if obj.__class__.__name__ == "module":
                setattr(obj, name, originals[(id(obj), name)])
            else:
                delattr(obj, name)


@dataclasses.dataclass
class PipelineRun:
    """What :func:`draw_with` / :func:`describe_with` return."""

    prompt: str
    result: object              # PIL image or text
    reference: object           # what the untouched model gives
    verdict: dict               # pixel judge (draw) or exact match with the world's description (describe)
    same_as_reference: bool


def draw_with(model, seed: int = 0, split: str = "test", num_inference_steps: int | None = None, **pieces) -> PipelineRun:
    """Draw the caption of held-out sample ``seed`` with learner ``pieces`` swapped in (see :func:`swap`);
    judge the picture with the pixel judge and compare it with the untouched model's."""
    import numpy as np

    from ..shapeworld import judge, world

    s = world.caption_image_sample(seed, split)
    ref = model.generate_image(s.caption, num_inference_steps=num_inference_steps).image
    with swap(model, **pieces):
        img = model.generate_image(s.caption, num_inference_steps=num_inference_steps).image
    verdict = judge.score_image(img, s.scene)
    same = bool(np.abs(np.asarray(img, dtype=np.int16) - np.asarray(ref, dtype=np.int16)).max() <= 1)
    print(f"caption {s.caption!r}: pixel judge shape={verdict['shape']} colour={verdict['colour']} "
          f"position={verdict['position']}; same picture as the reference model: {same}")
    return PipelineRun(s.caption, img, ref, verdict, same)


def describe_with(model, seed: int = 0, split: str = "test", **pieces) -> PipelineRun:
    """Describe held-out comprehension sample ``seed`` with learner ``pieces`` swapped in."""
    from ..shapeworld import world

    s = world.comprehension_sample(seed, split)
    ref = model.describe(s.image)
    with swap(model, **pieces):
        text = model.describe(s.image)
    verdict = dict(exact=text == s.answer, answer=s.answer)
    print(f"image {s.image.width}x{s.image.height}: {text!r} (truth {s.answer!r}, exact: {text == s.answer}); "
          f"same text as the reference model: {text == ref}")
    return PipelineRun("describe the image .", text, ref, verdict, text == ref)
