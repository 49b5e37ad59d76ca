"""Caption -> image on both arms: Type B3 (seedx-tiny: 64 forced queries, diffusion de-tokenizer) against
Type A (chameleon-tiny: N chosen codebook tokens, VQ decoder), timed in one run on this machine.

Each arm's caption -> image is split into its two parts, timed separately on the same test captions:

* **LLM**: Type B3 ``model.lvlm.generate`` on ``{caption}<img>`` with 65 new tokens (the 64 forced image
  tokens and ``</img>`` ride in one pass, see ``benchmarks/forced_block.py``), output resampler included;
  Type A ``model.generate_ids`` with ``N + 1`` new tokens (each code is chosen, so one pass per token);
* **decoder**: Type B3 ``model.draw`` (the de-tokenizer at its default diffusion steps and guidance);
  Type A ``model.vq.decode`` of the codes.

Also printed, counted rather than timed: image tokens per image, LLM forward passes per image (a forward
pre-hook on the LLM) and the bytes held by the KV cache when the image block is done (every key and value
tensor of the cache the LLM was last called with). The last line gives the ratios B3 / A of whole
caption -> image time, of the LLM part and of the decoder part (medians of interleaved repeats).

Run: ``python -m benchmarks.typea_vs_typeb3 [--typea chameleon-tiny] [--model seedx-tiny] [--repeats 5]``.
"""
from __future__ import annotations

import torch

from seedx_lab import world as W
from seedx_lab.lab import compare as C

from ._common import header, measure, med, parser, result_line, setup, spread


def parts(model, caption: str, seed: int):
    """One arm's caption -> image as two callables, the LLM part and the decoder part (the decoder's input
    computed once, outside the timed region)."""
    llm_out = C.image_llm_part(model, caption)
    return (lambda: C.image_llm_part(model, caption)), (lambda: C.image_decoder_part(model, llm_out, seed))


@torch.no_grad()
def main(argv=None) -> str:
    import seedx_lab
    from seedx_lab.loading import resolve

    p = parser(__doc__.splitlines()[0], repeats=5, warmup=1)
    p.add_argument("--typea", default="chameleon-tiny", help="the Type-A model (default chameleon-tiny)")
    p.add_argument("--captions", type=int, default=2, help="test captions timed (default 2)")
    args = p.parse_args(argv)
    setup(args)
    b3, a = seedx_lab.load(args.model).eval(), seedx_lab.load(args.typea).eval()
    header("typea_vs_typeb3", args, f"Type B3 {resolve(args.model)}; Type A {resolve(args.typea)}")
    caps = [W.caption_image_sample(s, "test").caption for s in range(args.captions)]
    fns = {}
    for k, c in enumerate(caps):
        fns[f"B3 llm {k}"], fns[f"B3 decoder {k}"] = parts(b3, c, seed=k)
        fns[f"A llm {k}"], fns[f"A decoder {k}"] = parts(a, c, seed=k)
    cost_b3, cost_a = C.image_cost(b3, caps[0]), C.image_cost(a, caps[0])
    n_b3, mem_b3, tok_b3 = cost_b3.passes, cost_b3.cache_bytes, cost_b3.tokens
    n_a, mem_a, tok_a = cost_a.passes, cost_a.cache_bytes, cost_a.tokens
    print(f"image tokens per image: B3 {tok_b3} (+ <img>, </img>), A {tok_a} (+ <img>, </img>)")
    print(f"LLM forward passes per image (prompt included): B3 {n_b3}, A {n_a}")
    print(f"KV cache at the end of the block: B3 {mem_b3 / 1024:.1f} KiB, A {mem_a / 1024:.1f} KiB "
          f"(prompt + block positions; these two LLMs have the same shape)")
    print(f"B3 decoder: {b3.config.num_inference_steps} diffusion steps, guidance {b3.config.guidance_scale}; "
          f"A decoder: one VQ decoder pass")

    times = measure(fns, args.repeats, args.warmup)
    per = {}
    for arm in ("B3", "A"):
        for part in ("llm", "decoder"):
            keys = [f"{arm} {part} {k}" for k in range(len(caps))]
            wall = [sum(times[key][r] for key in keys) / len(keys) for r in range(args.repeats)]
            cpu = [sum(times.cpu[key][r] for key in keys) / len(keys) for r in range(args.repeats)]
            per[arm, part] = wall
            print(f"  {arm:>2} {part:<8} per image {spread(wall, cpu)}")
    whole = {arm: med([x + y for x, y in zip(per[arm, "llm"], per[arm, "decoder"])]) for arm in ("B3", "A")}
    print(f"  B3 caption -> image {whole['B3'] * 1e3:.1f} ms, A {whole['A'] * 1e3:.1f} ms per image (median)")
    return result_line("typea_vs_typeb3", ratio=whole["B3"] / whole["A"],
                       ratio_llm=med(per["B3", "llm"]) / med(per["A", "llm"]),
                       ratio_decoder=med(per["B3", "decoder"]) / med(per["A", "decoder"]),
                       passes_b3=n_b3, passes_a=n_a, tokens_b3=tok_b3, tokens_a=tok_a,
                       cache_kib_b3=mem_b3 / 1024, cache_kib_a=mem_a / 1024, threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
