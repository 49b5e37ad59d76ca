"""Timed measurements of seedx-lab's fast paths, each runnable from the repository root.

=================================  ==========================================================
``python -m benchmarks.forced_block``    one forward pass per forced image block vs 65 decoding steps
``python -m benchmarks.processor``       batched ``AutoImageTokenGenerationProcessor`` vs a per-row loop
``python -m benchmarks.trace_overhead``  generation under ``seedx_lab.trace`` vs without it
``python -m benchmarks.pipeline``        caption -> image end to end, time per stage (+ ``pipeline.png``)
``python -m benchmarks.run_all``         all four, one after the other; writes ``RESULTS.md``
=================================  ==========================================================

Each prints what it measured and ends with one ``name=... key=value ...`` line. Times are medians of
several repeats (``time.perf_counter``) after warm-up runs, with torch's default thread count unless
``--threads`` says otherwise. ``--model`` takes a name or a folder; when ``data/seedx-tiny`` does not
exist yet the benchmarks fall back to a randomly initialised model of the same shapes and say so.
Correctness checks (equal tokens, equal outputs) live in ``tests/test_benchmarks_equalities.py``;
the benchmarks repeat the cheap ones so a printed ratio never comes from two different results.
"""
