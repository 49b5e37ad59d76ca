"""Activation patching: the batched layer x position grid against one forward pass per cell.

``probes.activation_patching`` patches every (site, position) cell of a clean prompt (a story step that
ends in a trigger phrase, so the model opens a picture) into its matched corrupt prompt (the same step
ending in ``.``), and back. Variants:

* ``batched``: every cell of a direction is one row of a single batch (one forward pass per direction);
* ``per cell``: one forward pass of batch 1 per cell (``batched=False``), the plain way.

Both must give the same grid (checked to 1e-5 before timing). The ratio is per-cell time / batched
time in one run. The batched grid is then timed on a ``--long-tokens`` prompt (BOS and the last tokens
of a longer story step that ends in the trigger).

``--tokens`` cuts the compared pair the same way (BOS and the trigger's last tokens); the test uses it to check
the agreement on a short pair.

Run: ``python -m benchmarks.patching [--model seedx-tiny] [--repeats 3] [--long-tokens 40] [--tokens N]``.
"""
from __future__ import annotations

import numpy as np
import torch

from seedx_lab import probes

from ._common import header, load_model, measure, med, parser, result_line, setup, spread

CLEAN = "we start with a big red circle on the left . it looks like this :"
LONG = ("a drawing lesson . we start with a big red circle on the left . it looks like this : "
        "that looks good . now add a small blue square on the right . also add a green star at the top . "
        "then add a yellow triangle at the bottom . here it is :")


def corrupt_of(ids: list[int], model) -> list[int]:
    dot = model.tokenizer.convert_tokens_to_ids(".")
    return ids[:-1] + [dot]


def cut_pair(model, text: str, n: int | None, option: str) -> tuple[list[int], list[int]]:
    """``(clean, corrupt)`` ids of ``text`` cut to BOS and its last ``n - 1`` tokens (``None``: all of it)."""
    ids = model.encode_ids(text)
    if n is not None:
        if n < 3 or n > len(ids):
            raise ValueError(f"{option} must be 3..{len(ids)}, got {n}")
        ids = ids[:1] + ids[len(ids) - (n - 1):]
    return ids, corrupt_of(ids, model)


def long_pair(model, n: int) -> tuple[list[int], list[int]]:
    return cut_pair(model, LONG, n, "--long-tokens")


def main(argv=None) -> str:
    p = parser(__doc__.splitlines()[0], repeats=3, warmup=1)
    p.add_argument("--long-tokens", type=int, default=40, help="length of the prompt the grid is timed on (default 40)")
    p.add_argument("--tokens", type=int, default=None,
                   help="cut the compared prompt pair to BOS and its last tokens, this many in all (default: whole)")
    args = p.parse_args(argv)
    setup(args)
    model, label = load_model(args.model)
    header("patching", args, label)
    clean, corrupt = cut_pair(model, CLEAN, args.tokens, "--tokens")
    L = model.lvlm.llm.config.num_hidden_layers
    cells = (L + 1) * len(clean)
    print(f"prompt pair: {len(clean)} tokens, {L + 1} sites -> {cells} cells per direction, two directions")

    def batched():
        return probes.activation_patching(model, clean, corrupt)

    def per_cell():
        return probes.activation_patching(model, clean, corrupt, batched=False)

    a, b = batched(), per_cell()
    diff = max(float(np.abs(a.raw_denoise - b.raw_denoise).max()), float(np.abs(a.raw_noise - b.raw_noise).max()))
    assert diff <= 1e-5, f"batched and per-cell grids differ by {diff}"
    print(f"batched and per-cell grids agree: max |difference| of logit(<img>) = {diff:.2g}")
    times = measure({"batched": batched, "per cell": per_cell}, args.repeats, args.warmup)
    for k, v in times.items():
        print(f"  {k:<10s} {spread(v, times.cpu[k])}")
    ratio = med(times["per cell"]) / med(times["batched"])
    print(f"per cell / batched = {ratio:.1f}x")
    lc, lx = long_pair(model, args.long_tokens)
    long_t = measure({"long": lambda: probes.activation_patching(model, lc, lx)}, args.repeats, 0)
    print(f"batched grid on a {len(lc)}-token prompt ({(L + 1) * len(lc)} cells per direction): "
          f"{spread(long_t['long'], long_t.cpu['long'])}")
    return result_line("patching", ratio=ratio, batched_ms=med(times["batched"]) * 1e3,
                       per_cell_ms=med(times["per cell"]) * 1e3, max_diff=diff, long_tokens=len(lc),
                       long_grid_ms=med(long_t["long"]) * 1e3, threads=torch.get_num_threads(),
                       model="trained" if label.startswith("trained") else "random")


if __name__ == "__main__":
    main()
