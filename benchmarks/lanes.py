"""Training lanes: stages b and c side by side in two one-thread processes vs one after another on all threads.

What ``TrainConfig.parallel`` buys on this CPU. Each variant trains the adapter + UNet (stage b) for
``--steps`` steps and the LLM + resamplers (stage c, its step mix in turn) for as many steps, on the
seedx-tiny shapes with small sample pools, each stage in a fresh spawned process:

* ``one after another``: stage b, then stage c, each process with ``--threads`` threads (default: all
  of torch's, 2 here) -- what ``parallel=False`` does;
* ``side by side``: both processes at once, each with half the threads -- what the lanes do.

The timed region of a process is its training steps only (not the import, the model or the caches);
the wall time of a variant is the sum (one after another) or the longer (side by side) of its two
processes. ``ratio`` = one after another / side by side for these step counts: above 1 the lanes finish
stages b and c sooner. Equal step counts leave one lane idle at the end, so ``work_ratio`` also gives the
work done per second when both lanes stay busy (as in the full run, whose lanes end within a minute of each
other): 2 / the mean of the two stages' slowdowns (one thread beside the other lane vs all threads alone).
Repeats alternate the variants.

``--pools`` sets the cached sample pools (captions, comprehension pictures, stories); they are built before
the timed region, so they change the set-up time, not the step times (the default is what the recorded runs
used; the test runs it with smaller pools).

Run: ``python -m benchmarks.lanes [--steps 30] [--repeats 3] [--pools 256,96,48]``.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import time

import torch

from ._common import header, med, parser, result_line, setup

POOLS = (256, 96, 48)                      # cached captions, comprehension pictures, stories of each process


def _pools(text: str) -> tuple[int, int, int]:
    """``"256,96,48"`` -> ``(256, 96, 48)``: three positive sizes."""
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        sizes = ()
    if len(sizes) != 3 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--pools takes three positive sizes CAPTIONS,COMPREHENSION,STORIES, got {text!r}")
    return sizes


def _train_steps(stage: str, threads: int, steps: int, pools: tuple[int, int, int], q) -> None:
    """Spawned: ``steps`` optimisation steps of one stage with ``threads`` threads on sample pools of
    ``pools`` = (captions, comprehension, stories); puts the seconds on ``q``."""
    import tempfile
    import warnings
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    from seedx_lab.training import trainer as TR
    with tempfile.TemporaryDirectory() as work:
        cfg = TR.TrainConfig(work=work, out=work + "/m", cache_size=pools[0], comprehension_pool=pools[1], story_pool=pools[2],
                             comprehension_keep_single=1.0, parallel=False)
        tr = TR.Trainer(cfg, fresh=True, progress=False)
        tr.model.vit.eval().requires_grad_(False)
        tr.model.detok.vae.eval().requires_grad_(False)
        tr.build_cache(detok=stage == "unet", llm=stage == "llm")
        seen = []
        real = tr._loop

        def timed_loop(name, modules, params, total, lr, step_fn):   # the trainer's own loop, timed after 2 warm-ups
            def step(i):
                if i == 2:
                    seen.append(time.perf_counter())
                return step_fn(i)
            real(name, modules, params, steps + 2, lr, step)
            seen.append(time.perf_counter())

        tr._loop = timed_loop
        (tr.stage_unet if stage == "unet" else tr.stage_llm)()
    q.put((stage, seen[1] - seen[0]))


def _results(q, procs, n: int) -> dict:
    """``n`` ``(stage, seconds)`` results from ``q``; a child that died without one is an error, not a hang."""
    import queue
    out = {}
    while len(out) < n:
        try:
            stage, secs = q.get(timeout=1.0)
            out[stage] = secs
        except queue.Empty:
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                raise RuntimeError(f"a timing process died (exit code {dead[0].exitcode}); see its traceback above")
    return out


def run_variant(side_by_side: bool, threads: int, steps: int, pools: tuple[int, int, int] = POOLS) -> tuple[float, dict]:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    per = max(1, threads // 2) if side_by_side else threads
    procs = [ctx.Process(target=_train_steps, args=(stage, per, steps, pools, q)) for stage in ("unet", "llm")]
    times = {}
    if side_by_side:
        for p in procs:
            p.start()
        times = _results(q, procs, len(procs))
    else:
        for p in procs:                                    # the two stages one after another
            p.start()
            times.update(_results(q, [p], 1))
            p.join()
    for p in procs:
        p.join()
    named = {"stage b": times["unet"], "stage c": times["llm"]}
    return (max if side_by_side else sum)(named.values()), named


def main(argv=None) -> str:
    p = parser(__doc__.splitlines()[0], repeats=3, warmup=0)
    p.add_argument("--steps", type=int, default=30, help="timed steps of each stage (default 30)")
    p.add_argument("--pools", type=_pools, default=POOLS, help="cached sample pools of each process: captions, "
                   "comprehension pictures, stories (default 256,96,48; built before the timed steps)")
    args = p.parse_args(argv)
    setup(args)
    threads = args.threads or torch.get_num_threads()
    header("lanes", args, "seedx-tiny shapes, untrained (the step costs do not depend on the weights)")
    print(f"steps per stage: {args.steps} (stage c: its step mix in turn); pools {args.pools}; threads: {threads} one after another, "
          f"{max(1, threads // 2)} per lane side by side")
    walls = {"one after another": [], "side by side": []}
    stage_s = {name: {"stage b": [], "stage c": []} for name in walls}
    for r in range(args.repeats):
        for name in walls:
            wall, parts = run_variant(name == "side by side", threads, args.steps, args.pools)
            walls[name].append(wall)
            for k, v in parts.items():
                stage_s[name][k].append(v)
            print(f"  repeat {r + 1} {name:>17}: {wall:6.2f} s  ({', '.join(f'{k} {v:.2f} s' for k, v in parts.items())})",
                  flush=True)
    seq, par = med(walls["one after another"]), med(walls["side by side"])
    slow = {k: med(stage_s["side by side"][k]) / med(stage_s["one after another"][k]) for k in ("stage b", "stage c")}
    print(f"slowdown of each stage on one thread beside the other lane: stage b {slow['stage b']:.2f}x, "
          f"stage c {slow['stage c']:.2f}x")
    return result_line("lanes", ratio=seq / par, work_ratio=2 / (sum(slow.values()) / 2), seq_s=seq, par_s=par,
                       slowdown_b=slow["stage b"], slowdown_c=slow["stage c"], steps=args.steps, threads=threads)


if __name__ == "__main__":
    main()
