"""Run every benchmark, one after the other, and write ``benchmarks/RESULTS.md``.

Each benchmark runs in its own process (``python -m benchmarks.NAME``, from the repository root) so
that none warms the caches of the next. The file records the machine (``nproc``, the CPU model from
``/proc/cpuinfo``, the load average before and after each run), the exact commands, every last
line, and the full output. Whatever follows a ``## Notes`` heading in an existing ``RESULTS.md`` is
kept, so hand-written remarks survive a re-run.

Run: ``python -m benchmarks.run_all [--model seedx-tiny] [--only forced_block,processor]``.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

from ._common import ROOT, cpu_model, load_average

BENCHMARKS = ("forced_block", "processor", "trace_overhead", "pipeline", "lanes", "patching", "typea_vs_typeb3")
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
USES_MODEL = {"forced_block", "trace_overhead", "pipeline", "patching", "typea_vs_typeb3"}


def run(name: str, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", f"benchmarks.{name}", *extra]
    shown = " ".join(["python", "-m", f"benchmarks.{name}", *extra])
    before = load_average()
    print(f"$ {shown}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    out = proc.stdout.rstrip()
    print(out, flush=True)
    if proc.returncode:
        print(proc.stderr, file=sys.stderr)
    lines = out.splitlines()
    last = lines[-1] if lines and lines[-1].startswith("name=") else f"name={name} FAILED rc={proc.returncode}"
    return dict(name=name, cmd=shown, out=out, last=last, load_before=before, load_after=load_average(),
                rc=proc.returncode, err=proc.stderr.strip().splitlines()[-5:] if proc.returncode else [])


def write(results: list[dict], argv: list[str]) -> None:
    notes = ""
    if RESULTS.exists():
        text = RESULTS.read_text()
        if "\n## Notes" in text:
            notes = text[text.index("\n## Notes") + 1:]
    nice = os.nice(0)
    import torch
    lines = [
        "# seedx-lab benchmarks: measured results",
        "",
        f"Written by `python -m benchmarks.run_all{' ' + ' '.join(argv) if argv else ''}` on "
        f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M UTC}.",
        "",
        "## Machine",
        "",
        f"- device: CPU only; `nproc` = {os.cpu_count()}; CPU model (`/proc/cpuinfo`): {cpu_model()}",
        f"- torch {torch.__version__}, default threads = {torch.get_num_threads()} (the benchmarks do not change it "
        f"unless `--threads` is given); process niceness {nice}",
        "- load average (1, 5, 15 min) before / after each benchmark is in the table: anything well above 0 "
        "means other work shared the CPU during the measurement",
        "",
        "## Last lines",
        "",
        "| benchmark | command | result (last line) | load before → after |",
        "|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['name']} | `{r['cmd']}` | `{r['last']}` | {r['load_before']} → {r['load_after']} |")
    lines += ["", "## Full output", ""]
    for r in results:
        lines += [f"### {r['name']}", "", "```", f"$ {r['cmd']}", r["out"], *r["err"], "```", ""]
    if any(r["name"] == "pipeline" for r in results):
        lines += ["![pipeline stages](pipeline.png)", ""]
    text = "\n".join(lines)
    if notes:
        text += "\n" + notes
    RESULTS.write_text(text.rstrip() + "\n")
    print(f"wrote {RESULTS}")


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="passed to the benchmarks that load a model")
    p.add_argument("--threads", default=None, help="passed to every benchmark")
    p.add_argument("--repeats", default=None, help="passed to the benchmarks that load a model")
    p.add_argument("--only", default=None, help="comma-separated subset, e.g. forced_block,processor")
    args = p.parse_args(argv)
    names = args.only.split(",") if args.only else BENCHMARKS
    results = []
    for name in names:
        extra = []
        if args.model and name in USES_MODEL:
            extra += ["--model", args.model]
        if args.repeats and name in USES_MODEL:
            extra += ["--repeats", args.repeats]
        if args.threads:
            extra += ["--threads", args.threads]
        results.append(run(name, extra))
    write(results, argv)


if __name__ == "__main__":
    main()
