"""One forward pass for a forced image block vs 65 decoding steps, caption -> image, LLM part only.

``model.lvlm.generate`` on the caption prompt ``{caption}<img>`` with ``max_new_tokens = 65`` (what
``SeedX.generate_image`` asks for): with ``fast_forced_block=True`` the 64 image tokens and ``</img>``
are known in advance and, because the prompt ends in ``<img>``, ride in the prompt's own forward pass
(one LLM call in all); with ``False`` they are decoded one step at a time, the processor forcing each. Both include the prompt pass and the output
resampler (``GenerateOutput.images[0][0].features``), i.e. everything up to the de-tokenizer.

Before timing, the two paths are compared: same tokens, and the largest absolute difference of the
64 block hidden states (float32) is printed.

Run: ``python -m benchmarks.forced_block [--model seedx-tiny] [--repeats 7]``.
"""
from __future__ import annotations

import torch

from seedx_lab import tokens as T

from ._common import header, load_model, measure, med, parser, result_line, setup, spread

CAPTION = "a big red circle on the left"


def caption_ids(model, caption: str = CAPTION) -> torch.Tensor:
    return torch.tensor([model.encode_ids(T.generation_prompt(caption))], device=model.device)


def run_llm(model, ids: torch.Tensor, fast: bool, special: tuple[int, int]):
    """``special``: the (eos, pad) ids, looked up once outside the timed region."""
    return model.lvlm.generate(ids, max_new_tokens=model.lvlm.num_img_tokens + 1, fast_forced_block=fast,
                               eos_token_id=special[0], pad_token_id=special[1])


def main(argv=None) -> str:
    p = parser(__doc__.splitlines()[0], repeats=7, warmup=2)
    p.add_argument("--caption", default=CAPTION)
    args = p.parse_args(argv)
    setup(args)
    model, label = load_model(args.model)
    header("forced_block", args, label)
    ids = caption_ids(model, args.caption)
    print(f"prompt: {T.generation_prompt(args.caption)!r} ({ids.shape[1]} tokens), "
          f"max_new_tokens={model.lvlm.num_img_tokens + 1}")

    sp = (model.tokenizer.eos_token_id, model.tokenizer.pad_token_id)
    fast, slow = run_llm(model, ids, True, sp), run_llm(model, ids, False, sp)
    same_tokens = torch.equal(fast.sequences, slow.sequences)
    hf, hs = fast.images[0][0].hidden, slow.images[0][0].hidden
    diff = float((hf - hs).abs().max())
    fdiff = float((fast.images[0][0].features - slow.images[0][0].features).abs().max())
    print(f"same tokens: {same_tokens}; block hidden states [64, {hf.shape[-1]}] max |fast - step| = {diff:.2e}; "
          f"output-resampled features max |diff| = {fdiff:.2e}")
    assert same_tokens and diff <= 1e-4, "the fast path disagrees with the step-by-step path"

    whole = fast.sequences                                       # prompt + <img_00000>..</img>

    def one_pass():
        """Not a generate path: one bare forward over prompt + block, then the output resampler: what
        the fast path's own bookkeeping (KV cache, positions, hidden-state collection) costs on top."""
        with torch.no_grad():
            h = model.lvlm.llm(input_ids=whole, output_hidden_states=True, use_cache=False).hidden_states[-1]
            return model.lvlm.output_resampler(h[:, ids.shape[1]: ids.shape[1] + 64])

    times = measure({"fast (1 pass)": lambda: run_llm(model, ids, True, sp),
                     "step by step (65 passes)": lambda: run_llm(model, ids, False, sp),
                     "floor: bare forward": one_pass}, args.repeats, args.warmup)
    for k, v in times.items():
        print(f"  {k:<27s} {spread(v, times.cpu[k])}")
    tf, ts = med(times["fast (1 pass)"]), med(times["step by step (65 passes)"])
    ratio = ts / tf
    print(f"step-by-step / fast = {ratio:.1f}x; step-by-step / floor = {ts / med(times['floor: bare forward']):.1f}x "
          "(the floor skips generate's bookkeeping)")
    cpu_ratio = med(times.cpu["step by step (65 passes)"]) / med(times.cpu["fast (1 pass)"])
    print(f"in CPU time of this process: {cpu_ratio:.1f}x")
    return result_line("forced_block", ratio=ratio, cpu_ratio=cpu_ratio, fast_ms=tf * 1e3, step_ms=ts * 1e3,
                       max_abs_diff=f"{diff:.1e}",
                       same_tokens=same_tokens, threads=torch.get_num_threads(),
                       model="trained" if label.startswith("trained") else "random")


if __name__ == "__main__":
    main()
