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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="seedx-lab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("tile", help="show the any-resolution decision for an image")
    t.add_argument("image")
    t.add_argument("--base", type=int, default=448, help="tile size in pixels (448 as published)")
    t.add_argument("--keep-ratio", action="store_true", help="pad instead of stretching")
    t.set_defaults(func=_cmd_tile)
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
