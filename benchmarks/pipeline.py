"""Caption -> image end to end on seedx-tiny, with the time of every stage.

``model.generate_image(caption)`` runs: prompt ``{caption}<img>`` -> LLM (prompt pass + the forced
64-token block in one pass) -> output resampler -> de-tokenizer (adapter ``ResamplerXLV2``, the UNet
denoising loop with its Euler scheduler, VAE decode) -> PIL image. Each repeat times the whole call
and, in the same run, each stage, by wrapping the stage modules on the instance for the duration of
the run (removed afterwards):

=========================  ====================================================================
LLM generation             ``lvlm.generate`` minus the output resampler it calls at the end
output resampler           ``lvlm.output_resampler`` forward(s)
de-tok adapter             ``detok.resampler`` forward(s) (twice per image with guidance > 1)
de-tok UNet loop           every ``detok.unet`` call + every ``scheduler.step``
VAE decode                 ``detok.decode_latents``
other                      the rest: tokenizing, noise, conversion to PIL, Python glue
=========================  ====================================================================

ViT encoding (any-res tiles of a reference world image -> ViT -> 256 features per view) is not on
the caption -> image path; it is timed on its own, as ``describe`` would run it, and shown apart.

The table is printed and drawn as a bar chart in ``benchmarks/pipeline.png`` (matplotlib, Agg).

Run: ``python -m benchmarks.pipeline [--model seedx-tiny] [--repeats 5] [--steps N]``.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

from ._common import describe_machine, header, load_model, med, parser, result_line, setup

CAPTION = "a big red circle on the left"
OUT_PNG = Path(__file__).resolve().parent / "pipeline.png"
STAGES = ("LLM generation", "output resampler", "de-tok adapter", "de-tok UNet loop", "VAE decode", "other")


class StageClock:
    """Accumulates seconds per stage while installed (``with clock.installed(model):``)."""

    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def installed(self, model):
        undo = []

        def wrap_module(module, stage):
            t0 = []
            h1 = module.register_forward_pre_hook(lambda m, a: t0.append(time.perf_counter()))
            h2 = module.register_forward_hook(
                lambda m, a, o: self.seconds.__setitem__(stage, self.seconds[stage] + time.perf_counter() - t0.pop()))
            undo.extend([h1.remove, h2.remove])

        def wrap_method(obj, attr, stage):
            inner = getattr(obj, attr)
            had = attr in obj.__dict__

            def timed(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return inner(*args, **kwargs)
                finally:
                    self.seconds[stage] += time.perf_counter() - t

            setattr(obj, attr, timed)
            undo.append(lambda: setattr(obj, attr, inner) if had else delattr(obj, attr))

        wrap_method(model.lvlm, "generate", "_generate")
        wrap_module(model.lvlm.output_resampler, "output resampler")
        wrap_module(model.detok.resampler, "de-tok adapter")
        wrap_module(model.detok.unet, "de-tok UNet loop")
        wrap_method(model.detok.scheduler, "step", "de-tok UNet loop")
        wrap_method(model.detok, "decode_latents", "VAE decode")
        try:
            yield self
        finally:
            for u in reversed(undo):
                u()


def run_once(model, caption, steps, seed=0):
    """One instrumented ``generate_image``: (total seconds, {stage: seconds})."""
    clock = StageClock()
    with clock.installed(model):
        t = time.perf_counter()
        model.generate_image(caption, num_inference_steps=steps, seed=seed)
        total = time.perf_counter() - t
    s = dict(clock.seconds)
    s["LLM generation"] = s.pop("_generate") - s.get("output resampler", 0.0)
    s["other"] = total - sum(s[k] for k in STAGES if k != "other" and k in s)
    return total, {k: s.get(k, 0.0) for k in STAGES}


def draw_chart(rows: list[tuple[str, float]], vit_s: float, title: str, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [k for k, _ in rows] + ["ViT encode (reference image;\nnot on the caption->image path)"]
    vals = [v * 1e3 for _, v in rows] + [vit_s * 1e3]
    colors = ["#4C72B0", "#8172B3", "#DD8452", "#C44E52", "#55A868", "#999999", "#CCCCCC"]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    bars = ax.barh(labels[::-1], vals[::-1], color=colors[: len(vals)][::-1])
    bars[0].set_hatch("//")
    for b, v in zip(bars, vals[::-1]):
        ax.text(b.get_width(), b.get_y() + b.get_height() / 2, f" {v:.1f} ms", va="center", fontsize=8)
    ax.set_xlabel("median time per caption -> image (ms)")
    ax.set_title(title, fontsize=9)
    ax.set_xlim(0, max(vals) * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> str:
    p = parser(__doc__.splitlines()[0], repeats=5, warmup=1)
    p.add_argument("--caption", default=CAPTION)
    p.add_argument("--steps", type=int, default=None, help="diffusion steps (default: the model's own)")
    p.add_argument("--png", default=str(OUT_PNG))
    args = p.parse_args(argv)
    setup(args)
    model, label = load_model(args.model)
    header("pipeline", args, label)
    steps = args.steps or model.config.num_inference_steps
    gscale = model.config.guidance_scale
    print(f"caption: {args.caption!r}; {steps} diffusion steps, guidance scale {gscale}, "
          f"image {model.detok.config.image_size}x{model.detok.config.image_size}")

    from seedx_lab import world as W
    ref = W.caption_image_sample(0).image
    encode = lambda: model.encode_image(ref)                                  # noqa: E731
    plain = lambda: model.generate_image(args.caption, num_inference_steps=steps, seed=0)   # noqa: E731

    for _ in range(args.warmup):
        encode()
        plain()
        run_once(model, args.caption, steps)
    vit_t, plain_t, inst_t = [], [], []
    per_stage: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeats):
        t = time.perf_counter()
        encode()
        vit_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        plain()
        plain_t.append(time.perf_counter() - t)
        total, stages = run_once(model, args.caption, steps)
        inst_t.append(total)
        for k, v in stages.items():
            per_stage[k].append(v)

    total_inst = med(inst_t)
    rows = [(k, med(per_stage[k])) for k in STAGES]
    n_views = encode()[0].shape[0]
    print(f"\n{'stage':<22s} {'median ms':>10s} {'share':>7s}")
    for k, v in rows:
        print(f"{k:<22s} {v * 1e3:10.2f} {v / total_inst:7.1%}")
    print(f"{'total (instrumented)':<22s} {total_inst * 1e3:10.2f}")
    print(f"{'total (plain call)':<22s} {med(plain_t) * 1e3:10.2f}   <- end-to-end generate_image, no wrappers")
    print(f"{'ViT encode (ref.)':<22s} {med(vit_t) * 1e3:10.2f}   ({n_views} views of a 64x64 world image; "
          "not part of caption -> image)")
    llm_share = sum(v for k, v in rows if k == "LLM generation") / total_inst
    detok_share = sum(v for k, v in rows if k in ("de-tok adapter", "de-tok UNet loop", "VAE decode")) / total_inst
    title = (f"seedx-tiny caption -> image, {steps} steps ({'trained' if label.startswith('trained') else 'random'} "
             f"weights)\n{describe_machine().split(', load')[0]}")
    draw_chart(rows, med(vit_t), title, Path(args.png))
    print(f"bar chart: {args.png}")
    return result_line("pipeline", total_s=med(plain_t), llm_share=llm_share, detok_share=detok_share,
                       vit_ms=med(vit_t) * 1e3, steps=steps, threads=torch.get_num_threads(),
                       model="trained" if label.startswith("trained") else "random")


if __name__ == "__main__":
    main()
