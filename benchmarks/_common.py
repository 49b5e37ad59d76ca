"""Shared pieces of the benchmarks: arguments, model loading, the machine, timing, the result line."""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent


def parser(description: str, repeats: int = 7, warmup: int = 2) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default="seedx-tiny",
                   help="model name or folder (default seedx-tiny; 'random' = a random model of the same shapes)")
    p.add_argument("--repeats", type=int, default=repeats, help=f"timed repeats per variant (default {repeats})")
    p.add_argument("--warmup", type=int, default=warmup, help=f"untimed runs per variant first (default {warmup})")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    return p


def setup(args) -> None:
    """Threads as asked; silence the deprecation chatter of transformers that would bury the results."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*past_key_values.*")


def load_model(spec: str):
    """``(model, label)``. Falls back to ``build_model(0)`` (random weights, trained shapes) when the
    default ``seedx-tiny`` is not there yet, and says so in ``label`` and on stdout."""
    import seedx_lab
    from seedx_lab.training import build_model

    if spec == "random":
        return build_model(0).eval(), "random stand-in (seedx_lab.training.build_model(0), untrained)"
    try:
        model = seedx_lab.load(spec)
    except FileNotFoundError as e:
        if spec != "seedx-tiny":
            raise
        print(f"NOTE: {e}; using a randomly initialised model with the seedx-tiny shapes instead "
              "(timings of the same shapes, but no trained behaviour)")
        return build_model(0).eval(), "random stand-in (seedx_lab.training.build_model(0), untrained)"
    from seedx_lab.loading import resolve
    return model.eval(), f"trained checkpoint {resolve(spec)}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def describe_machine() -> str:
    return (f"device=cpu ({cpu_model()}), nproc={os.cpu_count()}, torch threads={torch.get_num_threads()}, "
            f"load average={load_average()}, torch {torch.__version__}, python {platform.python_version()}")


def header(name: str, args, model_label: str | None = None) -> None:
    print(f"== {name}")
    print(f"machine: {describe_machine()}")
    if model_label is not None:
        print(f"model: {model_label}")
    print(f"repeats={args.repeats} (median reported), warm-up runs={args.warmup}")


class Times(dict):
    """``{variant: [wall seconds per call]}`` (``time.perf_counter``), plus ``.cpu``: the same calls in
    CPU seconds of this process (``time.process_time``, all its threads). On a shared machine the wall
    times also count the time this process waited for a core; the CPU times do not (but include
    the spinning of idle worker threads)."""

    def __init__(self, names):
        super().__init__({k: [] for k in names})
        self.cpu: dict[str, list[float]] = {k: [] for k in names}


def measure(variants: dict[str, Callable[[], object]], repeats: int, warmup: int,
            prepare: Callable[[], object] | None = None) -> Times:
    """Seconds per call of each variant. Variants are interleaved (a, b, a, b, ...) so slow drifts of
    the machine hit all of them alike. ``prepare`` (untimed) runs before each timed call; when given,
    its result is passed to the variant."""
    for fn in variants.values():
        for _ in range(warmup):
            fn(prepare()) if prepare else fn()
    times = Times(variants)
    for _ in range(repeats):
        for k, fn in variants.items():
            arg = prepare() if prepare else None
            c0, t0 = time.process_time(), time.perf_counter()
            fn(arg) if prepare else fn()
            t1, c1 = time.perf_counter(), time.process_time()
            times[k].append(t1 - t0)
            times.cpu[k].append(c1 - c0)
    return times


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def spread(xs: list[float], cpu: list[float] | None = None) -> str:
    """``median [min-max]`` in a unit that suits the size (and the median CPU time, when given)."""
    m = med(xs)
    unit, f = ("s", 1.0) if m >= 1 else ("ms", 1e3) if m >= 1e-3 else ("us", 1e6)
    text = f"{m * f:.3g} {unit} [{min(xs) * f:.3g}-{max(xs) * f:.3g}]"
    if cpu is not None:
        text += f"  cpu {med(cpu) * f:.3g} {unit}"
    return text


def result_line(name: str, **values) -> str:
    parts = [f"name={name}"]
    for k, v in values.items():
        if isinstance(v, float):
            v = f"{v:.3g}" if abs(v) < 1e4 else f"{v:.0f}"
        parts.append(f"{k}={v}")
    line = " ".join(parts)
    print(line, flush=True)
    return line
