"""Generation under ``seedx_lab.trace`` vs without it (LLM part of a story that draws a picture).

The run: ``model.lvlm.generate`` on a story prompt that ends in ``<img>`` (the trigger phrase the
shape-world stories use, then the opener), ``max_new_tokens=200``, ``max_blocks=3``: a forced
64-token block and ``</img>``, then free text and, with the trained model, the next picture(s) it
opens itself, until ``</s>``. (The untrained stand-in writes one block and 135 tokens of noise.) The timed
region is the whole ``with seedx_lab.trace(...)`` block: creating the trace, installing and
removing its hooks, the generation, and the copies it stores.

Variants:

* ``none``: no trace (the default fast path: one forward pass per forced block);
* ``full``: ``trace(model)``, every name, ``processor.decisions`` included (the processor is shown
  the logits of each forced token after the block's one pass, so this stays on the fast path);
* ``full tensors``: every name except ``processor.decisions``;
* ``filtered``: ``capture=["llm.layers.3.hidden"]``;
* ``none, step by step``: no trace, ``fast_forced_block=False``: what capturing the decisions used to
  cost when it meant decoding every forced token (for comparison only).

Run: ``python -m benchmarks.trace_overhead [--model seedx-tiny] [--repeats 7]``.
"""
from __future__ import annotations

import torch

import seedx_lab
from seedx_lab import tokens as T

from ._common import header, load_model, measure, med, parser, result_line, setup, spread

STORY = "we start with a big red circle on the left . it looks like this :"
FILTERED = ["llm.layers.3.hidden"]


def main(argv=None) -> str:
    p = parser(__doc__.splitlines()[0], repeats=7, warmup=2)
    p.add_argument("--max-new-tokens", type=int, default=200)
    args = p.parse_args(argv)
    setup(args)
    model, label = load_model(args.model)
    header("trace_overhead", args, label)
    ids = torch.tensor([model.encode_ids(STORY + T.BOI_TOKEN)], device=model.device)
    kw = dict(max_new_tokens=args.max_new_tokens, eos_token_id=model.tokenizer.eos_token_id,
              pad_token_id=model.tokenizer.pad_token_id, max_blocks=3)
    # every name but processor.decisions, as globs (a list of ~3,000 literal names would time the
    # trace's pattern check instead of the capture)
    tensors_only = ["vit.*", "input_resampler.*", "llm.*", "output_resampler.*", "detok.*"]
    assert set(seedx_lab.trace.names(model)) - {n for n in seedx_lab.trace.names(model)
                                                  if any(n.startswith(g[:-1]) for g in tensors_only)} \
        == {"processor.decisions"}

    def gen(fast=True):
        return model.lvlm.generate(ids, fast_forced_block=fast, **kw)

    def traced(capture):
        def run():
            with seedx_lab.trace(model, capture=capture) as t:
                out = gen()
            return t, out
        return run

    plain = gen()
    n_new = plain.new_tokens.shape[1]
    print(f"prompt: {STORY + T.BOI_TOKEN!r} ({ids.shape[1]} tokens); {n_new} new tokens, "
          f"{len(plain.images[0])} image block(s) completed")
    for name, cap in (("full", None), ("full tensors", tensors_only), ("filtered", FILTERED)):
        t, out = traced(cap)()
        assert torch.equal(out.sequences, plain.sequences), f"{name}: the trace changed the tokens"
        print(f"  {name:<13s} stores {len(t)} names, {t.nbytes / 2**20:.2f} MiB; same tokens as without a trace")

    times = measure({
        "none": gen,
        "full": traced(None),
        "full tensors": traced(tensors_only),
        "filtered": traced(FILTERED),
        "none, step by step": lambda: gen(False),
    }, args.repeats, args.warmup)
    for k, v in times.items():
        print(f"  {k:<20s} {spread(v, times.cpu[k])}")
    base = med(times["none"])
    r_full = med(times["full"]) / base
    r_tensors = med(times["full tensors"]) / base
    r_filtered = med(times["filtered"]) / base
    r_step = med(times["none, step by step"]) / base
    print(f"full / none = {r_full:.2f}x (for comparison, the step-by-step path without a trace: {r_step:.2f}x)")
    print(f"full tensors / none = {r_tensors:.2f}x; filtered / none = {r_filtered:.2f}x")
    c = {k: med(v) for k, v in times.cpu.items()}
    cpu = dict(cpu_ratio_full=c["full"] / c["none"], cpu_ratio_filtered=c["filtered"] / c["none"],
               cpu_ratio_full_tensors=c["full tensors"] / c["none"])
    print("in CPU time of this process: " + ", ".join(f"{k[4:]} {v:.2f}x" for k, v in cpu.items()))
    return result_line("trace_overhead", ratio_full=r_full, ratio_filtered=r_filtered, ratio_full_tensors=r_tensors,
                       **cpu,
                       ratio_step_by_step=r_step, none_ms=base * 1e3, new_tokens=n_new,
                       threads=torch.get_num_threads(), model="trained" if label.startswith("trained") else "random")


if __name__ == "__main__":
    main()
