"""The ``seedx-lab`` command line. ``seedx-lab --help`` lists the sub-commands.

Errors: a user mistake or an OS error (``ValueError``, ``TypeError``, ``OSError`` — a missing or unreadable
file, a full disk) is one line on stderr and exit status 2; anything else is an internal error, one line
and exit status 1, with the traceback under ``--debug`` (accepted anywhere on the line). Every sub-command
gets this from :func:`main`: a new one only registers its ``func`` in :func:`build_parser`.
"""
from __future__ import annotations

import argparse
import sys

from . import validate as V

USER_ERRORS = (ValueError, TypeError, OSError)      # OSError covers FileNotFoundError, PermissionError, ENOSPC


def _int_arg(check, *bounds):
    """An argparse ``type`` that parses an int and applies a :mod:`seedx_lab.validate` check."""
    def parse(text: str):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        try:
            return check("value", value, *bounds)
        except (ValueError, TypeError) as e:
            raise argparse.ArgumentTypeError(str(e).removeprefix("value ")) from None
    return parse


POSITIVE = _int_arg(V.positive_int)
THREADS = _int_arg(V.positive_int, 4096)
SEED = _int_arg(V.seed)
TILE_BASE = _int_arg(V.tile_base)


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
    return dict(device=V.device("--device", args.device), dtype=dtype)


def _settings(pairs: list[str], config_cls, reserved=()) -> dict:
    """``--set NAME=VALUE`` pairs as config fields: VALUE is read as JSON (numbers, true/false, null, lists)
    and otherwise kept as a string; names that are not fields of ``config_cls`` are refused, naming them."""
    import dataclasses
    import json

    fields = [f.name for f in dataclasses.fields(config_cls) if f.name not in reserved and f.name != "quick"]
    out = {}
    for pair in pairs:
        name, eq, value = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not eq or not name:
            raise ValueError(f"--set takes NAME=VALUE, got {pair!r}")
        if name not in fields:
            hint = f" (it has its own option --{name.replace('_', '-')})" if name in reserved else ""
            raise ValueError(f"--set: {name!r} is not a setting{hint}; settings: {', '.join(fields)}")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


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
    if args.init or args.only:
        kw.update(init=args.init, only=args.only)
    kw.update(_settings(args.set or [], TrainConfig,
                        reserved=("out", "work", "seed", "device", "threads", "parallel", "init", "only")))
    cfg = TrainConfig.quick_run(**kw) if args.quick else TrainConfig(**kw)
    train(cfg, fresh=args.fresh, progress=not args.no_progress)
    return 0


def _typea_config(args):
    """The TypeAConfig of a ``train-typea`` command line (work and out default per grid size)."""
    from .training.typea import TypeAConfig

    kw = dict(seed=args.seed, device=args.device, grid=args.grid)
    if args.out:
        kw["out"] = args.out
    if args.work:
        kw["work"] = args.work
    else:
        kw["work"] = f"runs/{'typea-quick' if args.quick else 'chameleon-tiny'}-{args.grid}x{args.grid}"
    if "out" not in kw:
        # the 4x4 arm is the shipped "chameleon-tiny"; other grids carry their size in the name
        kw["out"] = f"{kw['work']}/model" if args.quick else \
            "data/chameleon-tiny" if args.grid == 4 else f"data/chameleon-tiny-{args.grid}x{args.grid}"
    if args.threads:
        kw["threads"] = args.threads
    for name in ("vq_steps", "llm_steps", "vq_restart_every"):
        if getattr(args, name, None) is not None:
            kw[name] = getattr(args, name)
    if getattr(args, "vq_embed_dim", None):
        kw["vq_embed_dim"] = args.vq_embed_dim
    return TypeAConfig.quick_run(**kw) if args.quick else TypeAConfig(**kw)


def _cmd_train_typea(args) -> int:
    from .training.typea import train_typea

    train_typea(_typea_config(args), fresh=args.fresh, progress=not args.no_progress)
    return 0


def _cmd_eval(args) -> int:
    from .shapeworld.evaluate import detokenizer_ceiling, evaluate, is_typea, tokenizer_ceiling
    from .loading import load

    model = load(args.model, **_device_kwargs(args))
    r = evaluate(model, n=args.n, split=args.split, num_inference_steps=args.steps, progress=not args.no_progress)
    print(f"image -> text: caption_acc={r.caption_acc:.3f} (all objects exact: {r.caption_exact:.3f}) on {r.n} {args.split} images")
    print(f"text -> image: image_acc={r.image_acc:.3f} on {r.n} {args.split} captions (pixel judge)")
    print(f"stories: boi precision={r.boi_precision:.3f} recall={r.boi_recall:.3f}; text-only: false_boi={r.false_boi:.3f}")
    if is_typea(model):
        ceiling = tokenizer_ceiling(model, n=args.n, split=args.split, progress=not args.no_progress)
        print(f"tokenizer ceiling: VQ round trip judged right on {ceiling:.3f} of {r.n} {args.split} caption images "
              f"({model.num_codes} codes per image)")
    else:       # the Type-B3 counterpart: the de-tokenizer drawing from the true picture's features
        ceiling = detokenizer_ceiling(model, n=args.n, split=args.split, num_inference_steps=args.steps,
                                      progress=not args.no_progress)
        print(f"de-tokenizer ceiling: drawing from true features judged right on {ceiling:.3f} of {r.n} "
              f"{args.split} caption images ({model.lvlm.num_out_features} features per image; the LLM carries "
              f"{model.lvlm.num_img_tokens} tokens)")
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


def _cmd_plan(args) -> int:
    from .published.plan import format_plan, make_plan

    print(format_plan(make_plan(args.dtype, args.gpus, args.gpu_memory, text_tokens=args.text_tokens)))
    return 0


def _cmd_claims(args) -> int:
    from .lab.claims import ledger
    from .loading import load

    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:                                   # main() may run in a process that goes on (tests, notebooks)
        model = load(args.model, **_device_kwargs(args))
        print(ledger(model, n=args.n, n_steps=args.n_steps, only=args.only, model_name=args.model,
                     progress=not args.no_progress))
    finally:
        torch.set_num_threads(previous)
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
        p.add_argument("--steps", type=POSITIVE, default=None, help="de-tokenizer sampling steps")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seedx-lab", description=__doc__.split("\n\n")[0],
                                epilog="errors: exit 2 for a user or OS error, 1 for an internal one")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error (anywhere on the line)")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tile", help="show the any-resolution decision for an image")
    t.add_argument("image")
    t.add_argument("--base", type=TILE_BASE, default=448,
                   help=f"tile size in pixels (448 as published; at most {V.MAX_TILE_BASE})")
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
    tr.add_argument("--seed", type=SEED, default=0)
    tr.add_argument("--device", default="cpu")
    tr.add_argument("--threads", type=THREADS, default=None, help="torch threads (a positive int)")
    tr.add_argument("--sequential", action="store_true",
                    help="stages b and c one after the other in this process (default on a CPU: side by side in "
                         "two processes of half the threads each)")
    tr.add_argument("--init", metavar="MODEL",
                    help="a saved model (e.g. data/seedx-tiny) whose weights outside --only are kept")
    tr.add_argument("--only", choices=("llm", "detok"),
                    help="with --init: the lane retrained from scratch (llm: input resampler, LLM, output "
                         "resampler; e.g. --only llm --set num_img_tokens=16)")
    tr.add_argument("--fresh", action="store_true", help="ignore a saved state and start over")
    tr.add_argument("--no-progress", action="store_true")
    tr.add_argument("--set", action="append", metavar="NAME=VALUE",
                    help="any other TrainConfig field, e.g. --set llm_steps=500 --set vit_batch=64 (repeatable)")
    tr.set_defaults(func=_cmd_train)
    ta = sub.add_parser("train-typea", help="train chameleon-tiny (Type A: VQ codes as LLM tokens) on the same world")
    ta.add_argument("--grid", type=int, default=4, choices=[4, 8], help="code grid side: 4 (16 codes) or 8 (64 codes)")
    ta.add_argument("--quick", action="store_true", help="a few-minute run with tiny step counts")
    ta.add_argument("--out", help="checkpoint folder (default data/chameleon-tiny for 4x4, data/chameleon-tiny-GxG otherwise; quick: WORK/model)")
    ta.add_argument("--work", help="folder for the resumable state and the loss log (default runs/...)")
    ta.add_argument("--seed", type=int, default=0)
    ta.add_argument("--device", default="cpu")
    ta.add_argument("--threads", type=int, default=None)
    ta.add_argument("--vq-steps", type=POSITIVE, default=None, help="tokenizer steps (default: TypeAConfig's)")
    ta.add_argument("--llm-steps", type=POSITIVE, default=None, help="LLM steps (default: seedx-tiny's)")
    ta.add_argument("--vq-embed-dim", type=POSITIVE, default=None, help="codebook vector width (default: TypeAConfig's)")
    ta.add_argument("--vq-restart-every", type=int, default=None,
                    help="move codes unused for this many VQ steps onto batch latents (default: TypeAConfig's; 0: never)")
    ta.add_argument("--fresh", action="store_true", help="ignore a saved state and start over")
    ta.add_argument("--no-progress", action="store_true")
    ta.set_defaults(func=_cmd_train_typea)
    ev = sub.add_parser("eval", help="held-out evaluation: caption_acc, image_acc, boi_f1, false_boi")
    _add_model_args(ev, steps=True)
    ev.add_argument("-n", type=POSITIVE, default=200, help="samples per task")
    ev.add_argument("--split", default="test", choices=["train", "validation", "test"])
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(func=_cmd_eval)
    ge = sub.add_parser("generate", help="caption -> image")
    ge.add_argument("caption")
    ge.add_argument("--out", default="seedx.png")
    ge.add_argument("--seed", type=SEED, default=0)
    _add_model_args(ge, steps=True)
    ge.set_defaults(func=_cmd_generate)
    de = sub.add_parser("describe", help="image -> text")
    de.add_argument("image")
    de.add_argument("--question", default="describe the image .")
    _add_model_args(de)
    de.set_defaults(func=_cmd_describe)
    pl = sub.add_parser("plan", help="size of the published SEED-X per stage and dtype, and a device map (no download)")
    pl.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    pl.add_argument("--gpus", type=int, default=0, help="number of GPUs to plan for (0: no device map)")
    pl.add_argument("--gpu-memory", default="80GiB", help="memory of each GPU, e.g. 80GiB, 24GB")
    pl.add_argument("--text-tokens", type=int, default=128, help="text tokens in the generation sized for activations")
    pl.set_defaults(func=_cmd_plan)
    cl = sub.add_parser("claims", help="measure the seed analysis's 12 claims on a model and print the ledger")
    _add_model_args(cl)
    cl.add_argument("-n", type=int, default=6, help="stories / captions / prompts per claim (default 6)")
    cl.add_argument("--n-steps", type=int, default=8,
                    help="held-out captions for claim 12's sweep over 1, 2, 5, 10, 25, 50 steps (default 8)")
    cl.add_argument("--only", type=int, nargs="+", metavar="ID", help="claim numbers to run (default all 12)")
    cl.add_argument("--threads", type=THREADS, default=1,
                    help="torch threads (default 1: seedx-tiny's small matrix products gain little from a second "
                         "thread, and on a busy CPU several threads spend their time waiting for each other)")
    cl.add_argument("--no-progress", action="store_true")
    cl.set_defaults(func=_cmd_claims)
    ex = sub.add_parser("exercises", help="write exercise copies of the notebooks (solutions replaced by stubs)")
    ex.add_argument("out", help="folder to write them to")
    ex.add_argument("--notebooks", default=None, help="notebook folder (default: the workbook's notebooks/)")
    ex.set_defaults(func=_cmd_exercises)
    return p


def _one_line(e: BaseException) -> str:
    text = " ".join(part.strip() for part in str(e).splitlines() if part.strip())
    return text or type(e).__name__


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    args = build_parser().parse_args([a for a in argv if a != "--debug"])
    try:
        return args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print(f"seedx-lab {args.command}: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if debug:
            raise
        print(f"seedx-lab {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:            # a bug, not the user's doing: say so, and how to see where
        if debug:
            raise
        print(f"seedx-lab {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
