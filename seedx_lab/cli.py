"""The ``seedx-lab`` command line. ``seedx-lab --help`` lists the sub-commands."""
from __future__ import annotations

import argparse
import sys


def _cmd_tile(args) -> int:
    from .anyres import tile_image

    t = tile_image(args.image, base=args.base, keep_ratio=args.keep_ratio)
    d = t.decision
    print(f"image {d.image_size[0]}x{d.image_size[1]}  llava={d.llava_choice}  aspect={d.aspect_choice}  "
          f"chosen={d.chosen} grid={d.grid[0]}x{d.grid[1]}  views={len(t)} (tiles + global)")
    for row in d.table:
        print(f"  {row['grid']:>4}  {row['width']:>5}x{row['height']:<5} effective={row['effective']:>9} "
              f"waste={row['waste']:>9} aspect_diff={row['aspect_ratio_diff']:.3f} area_ratio={row['area_ratio']:.3f}")
    return 0


def _cmd_convert(args) -> int:
    from .published.checkpoints import write_published_layout
    from .loading import load

    paths = write_published_layout(load(args.model), args.to_published, variant=args.variant)
    print(f"wrote {args.model} in the published SEED-X layout under {args.to_published}")
    for part in ("llm", "agent", "vit", "detok", "sdxl", "tokenizer"):
        print(f"  {part:<9} {getattr(paths, part)}")
    return 0


def _device_kwargs(args):
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
    return dict(device=args.device, dtype=dtype)


def _cmd_train(args) -> int:
    from .training.trainer import TrainConfig, train

    kw = dict(seed=args.seed, device=args.device)
    if args.out:
        kw["out"] = args.out
    if args.work:
        kw["work"] = args.work
    if args.threads:
        kw["threads"] = args.threads
    if args.sequential:
        kw["parallel"] = False
    cfg = TrainConfig.quick_run(**kw) if args.quick else TrainConfig(**kw)
    train(cfg, fresh=args.fresh, progress=not args.no_progress)
    return 0


def _cmd_eval(args) -> int:
    from .shapeworld.evaluate import evaluate
    from .loading import load

    model = load(args.model, **_device_kwargs(args))
    r = evaluate(model, n=args.n, split=args.split, num_inference_steps=args.steps, progress=not args.no_progress)
    print(f"image -> text: caption_acc={r.caption_acc:.3f} (all objects exact: {r.caption_exact:.3f}) on {r.n} {args.split} images")
    print(f"text -> image: image_acc={r.image_acc:.3f} on {r.n} {args.split} captions (pixel judge)")
    print(f"stories: boi precision={r.boi_precision:.3f} recall={r.boi_recall:.3f}; text-only: false_boi={r.false_boi:.3f}")
    print(r.line())
    return 0


def _cmd_generate(args) -> int:
    from .loading import load

    model = load(args.model, **_device_kwargs(args))
    res = model.generate_image(args.caption, num_inference_steps=args.steps, seed=args.seed)
    res.image.save(args.out)
    print(f"wrote {args.out} ({res.image.width}x{res.image.height}) for {res.prompt!r}")
    return 0


def _cmd_describe(args) -> int:
    from .loading import load

    model = load(args.model, **_device_kwargs(args))
    print(model.describe(args.image, question=args.question))
    return 0


def _cmd_exercises(args) -> int:
    from .lab.exercises import write_exercises

    paths = write_exercises(args.out, args.notebooks)
    print(f"wrote {len(paths) // 2} exercise notebooks (.py and .ipynb, solutions stubbed) to {args.out}")
    return 0


def _add_model_args(p, steps: bool = False):
    p.add_argument("--model", default="seedx-tiny", help="model name in data/ or a folder (default seedx-tiny)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    if steps:
        p.add_argument("--steps", type=int, default=None, help="de-tokenizer sampling steps")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seedx-lab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tile", help="show the any-resolution decision for an image")
    t.add_argument("image")
    t.add_argument("--base", type=int, default=448, help="tile size in pixels (448 as published)")
    t.add_argument("--keep-ratio", action="store_true", help="pad instead of stretching")
    t.set_defaults(func=_cmd_tile)
    c = sub.add_parser("convert", help="write a model in the published SEED-X file layout")
    c.add_argument("--to-published", metavar="OUT", required=True, help="folder to write (the pretrained/ root)")
    c.add_argument("--model", default="seedx-tiny", help="model name or folder (default: seedx-tiny)")
    c.add_argument("--variant", default="seed_x", choices=("seed_x", "seed_x_i"), help="folder name of the LLM + agent")
    c.set_defaults(func=_cmd_convert)
    tr = sub.add_parser("train", help="train seedx-tiny (three stages) and write its checkpoint")
    tr.add_argument("--quick", action="store_true", help="a few-minute run (for the training notebook)")
    tr.add_argument("--out", help="checkpoint folder (default data/seedx-tiny; quick: runs/seedx-quick/model)")
    tr.add_argument("--work", help="folder for the resumable state and the loss log")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--threads", type=int, default=None)
    tr.add_argument("--sequential", action="store_true",
                    help="stages b and c one after the other in this process (default on a CPU: side by side in "
                         "two processes of half the threads each)")
    tr.add_argument("--fresh", action="store_true", help="ignore a saved state and start over")
    tr.add_argument("--no-progress", action="store_true")
    tr.set_defaults(func=_cmd_train)
    ev = sub.add_parser("eval", help="held-out evaluation: caption_acc, image_acc, boi_f1, false_boi")
    _add_model_args(ev, steps=True)
    ev.add_argument("-n", type=int, default=200, help="samples per task")
    ev.add_argument("--split", default="test", choices=["train", "validation", "test"])
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=_cmd_eval)
    ge = sub.add_parser("generate", help="caption -> image")
    ge.add_argument("caption")
    ge.add_argument("--out", default="seedx.png")
    ge.add_argument("--seed", type=int, default=0)
    _add_model_args(ge, steps=True)
    ge.set_defaults(func=_cmd_generate)
    de = sub.add_parser("describe", help="image -> text")
    de.add_argument("image")
    de.add_argument("--question", default="describe the image .")
    _add_model_args(de)
    de.set_defaults(func=_cmd_describe)
    ex = sub.add_parser("exercises", help="write exercise copies of the notebooks (solutions replaced by stubs)")
    ex.add_argument("out", help="folder to write them to")
    ex.add_argument("--notebooks", default=None, help="notebook folder (default: the workbook's notebooks/)")
    ex.set_defaults(func=_cmd_exercises)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"seedx-lab {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
