"""Batched ``AutoImageTokenGenerationProcessor`` vs a per-row Python loop, batch 64, 32k vocabulary.

The per-row reference is written here the way the published processor works: for every row it
reads the last token with ``.item()``, looks it up in the list ``[<img>, <img_00000>, ...,
</img>]`` with ``in`` / ``list.index``, and either assigns ``max(row) + 10`` to the next token of the
block or writes ``0.0`` over the image tokens and ``</img>`` (building the index tensor each time),
in place.

The vocabulary is the published one's size (32,000 LLaMA tokens + 330 added), and the 64 rows are
in mixed states: plain text, just after ``<img>``, inside a block at different depths, closing
(64 image tokens written, ``</img>`` next), after ``</img>``, and a stray image token after text.

Both get a fresh copy of the same scores before every timed call (the copy is not timed). The
batched processor returns a new tensor by default; ``inplace=True`` writes into its input like the
reference does, so the in-place ratio compares like with like. The outputs are checked to be
identical (``torch.equal``) before anything is timed.

Run: ``python -m benchmarks.processor [--repeats N] [--batch 64] [--vocab 32330]``.
"""
from __future__ import annotations

import inspect

import torch

from seedx_lab.generation import AutoImageTokenGenerationProcessor, forced_block_ids
from seedx_lab.tokens import ImageTokenIds

from ._common import header, measure, med, parser, result_line, setup, spread

TEXT_VOCAB = 32000
N_IMG = 64


def text_vocab_for(vocab: int) -> int:
    """Text tokens of a vocabulary of ``vocab``: the published split (330 added tokens) when it fits."""
    if vocab < 110:
        raise ValueError(f"vocab must hold at least 110 tokens (text + 104 special), got {vocab}")
    return vocab - 330 if vocab >= 340 else vocab - 104


def vocab_ids(text_vocab: int = TEXT_VOCAB) -> ImageTokenIds:
    """Special tokens right after the text vocabulary, as in SEED-X's extended LLaMA tokenizer."""
    return ImageTokenIds(boi=text_vocab, eoi=text_vocab + 1, bop=text_vocab + 2, eop=text_vocab + 3,
                         img=tuple(range(text_vocab + 4, text_vocab + 4 + 100)))


def mixed_rows(token_ids: ImageTokenIds, batch: int = 64, length: int = 96, seed: int = 0) -> torch.Tensor:
    """``[batch, length]`` ids whose last tokens put the rows in every state, in a fixed mixed order."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, token_ids.boi, (batch, length), generator=g)         # text before the specials
    F = forced_block_ids(token_ids, N_IMG)
    kinds = ("text", "boi", "inside", "closing", "after_eoi", "stray")
    for b in range(batch):
        kind = kinds[(b * 5 + b // 7) % len(kinds)]
        if kind == "boi":
            ids[b, -1] = F[0]
        elif kind == "inside":
            k = 1 + (b * 13) % (N_IMG - 1)                         # 1..63 image tokens already written
            ids[b, -(k + 1):] = torch.tensor(F[: k + 1])
        elif kind == "closing":
            ids[b, -(N_IMG + 1):] = torch.tensor(F[: N_IMG + 1])
        elif kind == "after_eoi":
            ids[b, -(N_IMG + 2):] = torch.tensor(F)
        elif kind == "stray":
            ids[b, -1] = F[1 + (b * 7) % N_IMG]
    return ids


def mixed_scores(batch: int, vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 1)
    shift = torch.randn(batch, 1, generator=g) * 4                  # some rows all negative: 0.0 then wins
    return torch.randn(batch, vocab, generator=g) * 2 + shift


def per_row_reference(forced: list[int]):
    """The published loop (per row: ``.item()``, ``in``, ``list.index``), writing into ``scores``."""
    def process(input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for i in range(input_ids.shape[0]):
            last = input_ids[i, -1].item()
            if last in forced[:-1]:
                nxt = forced[forced.index(last) + 1]
                scores[i, nxt] = scores[i].max() + 10.0
            else:
                scores[i, torch.tensor(forced[1:]).to(dtype=torch.long)] = 0.0
        return scores
    return process


def measure_at(batch: int, vocab: int, repeats: int, warmup: int, verbose: bool = True) -> dict:
    """Check identical outputs, then time every variant at one (batch, vocab). Medians in seconds."""
    tid = vocab_ids(text_vocab_for(vocab))
    ids = mixed_rows(tid, batch)
    scores = mixed_scores(batch, vocab)
    forced = forced_block_ids(tid, N_IMG)
    ref = per_row_reference(forced)
    make = lambda **kw: AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=N_IMG,  # noqa: E731
                                                          mode="faithful", **kw)
    proc = make()
    has_inplace = "inplace" in inspect.signature(AutoImageTokenGenerationProcessor).parameters
    proc_in = make(inplace=True) if has_inplace else None
    st = proc.states(ids).state
    counts = {name: int((st == code).sum()) for code, name in enumerate(("outside", "inside", "closing"))}

    # identical outputs first
    want = ref(ids, scores.clone())
    before = scores.clone()
    same = torch.equal(proc(ids, scores), want)
    untouched = torch.equal(scores, before)
    same_in = torch.equal(proc_in(ids, scores.clone()), want) if proc_in is not None else None
    if verbose:
        print(f"batch={batch} vocab={vocab} row states: {counts}")
        print(f"identical outputs: batched={same}" + (f" batched-inplace={same_in}" if proc_in is not None else "")
              + f"; input left unmodified by the default processor: {untouched}")
    assert same and untouched and same_in is not False, "batched processor differs from the per-row reference"

    variants = {
        "per-row reference (in place)": lambda s: ref(ids, s),
        "batched (returns a new tensor)": lambda s: proc(ids, s),
    }
    if proc_in is not None:
        variants["batched, inplace=True"] = lambda s: proc_in(ids, s)
    # what any version has to pay at least: one read of every row for its max (and one copy)
    variants["floor: scores.amax(-1)"] = lambda s: s.amax(dim=-1)
    variants["floor: scores.clone()"] = lambda s: s.clone()
    times = measure(variants, repeats, warmup, prepare=lambda: scores.clone())
    if verbose:
        for k, v in times.items():
            print(f"  {k:<34s} {spread(v, times.cpu[k])}")
    m = {k: med(v) for k, v in times.items()}
    r = m["per-row reference (in place)"]
    res = dict(ratio=r / m["batched (returns a new tensor)"], bound_amax=r / m["floor: scores.amax(-1)"],
               ref_us=r * 1e6, batched_us=m["batched (returns a new tensor)"] * 1e6,
               identical=bool(same and same_in is not False))
    if proc_in is not None:
        res["ratio_inplace"] = r / m["batched, inplace=True"]
        res["inplace_us"] = m["batched, inplace=True"] * 1e6
        res["cpu_ratio_inplace"] = med(times.cpu["per-row reference (in place)"]) / med(times.cpu["batched, inplace=True"])
    return res


def profile_at(batch: int, vocab: int, calls: int = 20, top: int = 6) -> None:
    """``torch.profiler`` tables (self CPU time per operator) of the reference and the batched
    processor: where the time of each goes, and how much of it is reading the rows for their max."""
    from torch.profiler import ProfilerActivity, profile
    tid = vocab_ids(text_vocab_for(vocab))
    ids, scores = mixed_rows(tid, batch), mixed_scores(batch, vocab)
    forced = forced_block_ids(tid, N_IMG)
    runs = {"per-row reference": per_row_reference(forced),
            "batched, inplace=True": AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=N_IMG,
                                                                       inplace=True)}
    for name, fn in runs.items():
        copies = [scores.clone() for _ in range(calls)]
        fn(ids, scores.clone())                                     # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for c in copies:
                fn(ids, c)
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)
        print(f"-- profile: {name}, {calls} calls at batch={batch} vocab={vocab}")
        print(table)


def main(argv=None) -> str:
    p = parser(__doc__.splitlines()[0], repeats=51, warmup=5)
    p.add_argument("--profile", action="store_true", help="also print torch.profiler tables of both versions")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--vocab", type=int, default=TEXT_VOCAB + 330)
    p.add_argument("--small-vocab", type=int, default=TEXT_VOCAB // 128,
                   help="also measure at this vocabulary size first, where per-call overhead dominates "
                        "(0: skip)")
    args = p.parse_args(argv)
    setup(args)
    header("processor", args, "none (the processor alone, float32 scores)")

    if args.small_vocab:
        print(f"-- for comparison: a small vocabulary ({args.small_vocab}), same rows (overhead-bound regime)")
        small = measure_at(args.batch, args.small_vocab, args.repeats, args.warmup)
        print(f"   per-row / batched = {small['ratio']:.1f}x"
              + (f"; in place {small['ratio_inplace']:.1f}x" if "ratio_inplace" in small else ""))
        print(f"-- the measurement: vocabulary {args.vocab} (the published size)")
    res = measure_at(args.batch, args.vocab, args.repeats, args.warmup)
    if args.profile:
        profile_at(args.batch, args.vocab)
    print(f"per-row / batched = {res['ratio']:.1f}x"
          + (f"; in place {res['ratio_inplace']:.1f}x" if "ratio_inplace" in res else "")
          + f"; upper bound for any version that reads every row once (per-row / amax) = {res['bound_amax']:.1f}x")
    keys = ["ratio", "ratio_inplace", "cpu_ratio_inplace", "bound_amax", "ref_us", "batched_us", "inplace_us",
            "identical"]
    return result_line("processor", **{k: res[k] for k in keys if k in res}, batch=args.batch, vocab=args.vocab,
                       threads=torch.get_num_threads())


if __name__ == "__main__":
    main()
