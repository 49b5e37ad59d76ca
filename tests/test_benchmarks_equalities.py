"""What the benchmarks time must compute the same thing both ways (nothing here is timed).

* the forced-block fast path of ``ContinuousLVLM.generate`` against the step-by-step path, on a
  model of the trained seedx-tiny shapes: story prompts, several blocks per row, batched rows that
  open their blocks at different steps; hidden states of every block within 1e-4 (float32) and
  identical tokens, also for the text after the blocks;
* the batched ``AutoImageTokenGenerationProcessor`` against per-row references at batch 64 over a
  32k vocabulary (identical tensors), in both modes and in place;
* each benchmark runs (one repeat) and ends with its ``name=... key=value`` line.
"""
from __future__ import annotations

import argparse
import re
import warnings

import pytest
import torch
from transformers import LogitsProcessor

from benchmarks import processor as bp
from seedx_lab import tokens as T
from seedx_lab.generation import AutoImageTokenGenerationProcessor, forced_block_ids

pytestmark = [pytest.mark.filterwarnings("ignore::FutureWarning"),
              pytest.mark.filterwarnings("ignore:.*past_key_values.*"),
              # the blocks the tests open near max_new_tokens are cut on purpose; generate warns about it
              pytest.mark.filterwarnings("ignore:.*(cut off|token\\(s\\) left).*:UserWarning")]

from seedx_lab.loading import DATA_DIR                                            # noqa: E402

TRAINED = DATA_DIR / "seedx-tiny"
STORIES = ["we start with a big red circle on the left . it looks like this :",
           "now a new picture with a big green triangle at the top . here it is :",
           "a drawing lesson . first a small blue square in the middle . it looks like this :"]


class OpenBlockEvery(LogitsProcessor):
    """Makes ``<img>`` the top choice in row b once ``period[b]`` tokens followed the last ``</img>``
    or ``:`` (a story's trigger phrase ends in ``:``). It reads only the sequence, so the fast path
    (which skips processors inside a block) and the step-by-step path see the same decisions."""

    def __init__(self, token_ids: T.ImageTokenIds, colon: int, period: list[int]):
        self.t, self.colon, self.period = token_ids, colon, period
        self.inside = set(forced_block_ids(token_ids, 64)[:-1])

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        for b, row in enumerate(input_ids.tolist()):
            if row[-1] in self.inside:
                continue
            marks = [i for i, x in enumerate(row) if x in (self.t.eoi, self.colon)]
            since = len(row) - 1 - marks[-1] if marks else -1
            if since == self.period[b]:
                scores[b, self.t.boi] = scores[b].abs().max() + 5.0     # > 0: beats the 0.0 "ban" too
        return scores


def left_padded(model, texts):
    rows = [model.encode_ids(t) for t in texts]
    n = max(len(r) for r in rows)
    pad = model.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (n - len(r)) + r for r in rows])
    return ids, (ids != pad).long()


def generate_both(model, ids, mask, processors, max_new_tokens):
    kw = dict(attention_mask=mask, max_new_tokens=max_new_tokens, eos_token_id=model.tokenizer.eos_token_id,
              pad_token_id=model.tokenizer.pad_token_id)
    fast = model.lvlm.generate(ids, logits_processor=processors(), fast_forced_block=True, **kw)
    slow = model.lvlm.generate(ids, logits_processor=processors(), fast_forced_block=False, **kw)
    return fast, slow


def assert_same(fast, slow, min_blocks):
    assert torch.equal(fast.sequences, slow.sequences)                     # text after the blocks too
    n = 0
    for row_f, row_s in zip(fast.images, slow.images):
        assert [im.block for im in row_f] == [im.block for im in row_s]
        for a, b in zip(row_f, row_s):
            assert a.hidden.dtype == torch.float32
            assert (a.hidden - b.hidden).abs().max() <= 1e-4
            assert (a.features - b.features).abs().max() <= 1e-4
            n += 1
    assert n >= min_blocks
    # the hidden state of every position fed, not only the blocks'
    assert (fast.hidden - slow.hidden).abs().max() <= 1e-4


def test_fast_path_single_story_several_blocks(model):
    ids, mask = left_padded(model, STORIES[:1])
    colon = model.tokenizer.convert_tokens_to_ids(":")
    procs = lambda: [OpenBlockEvery(model.token_ids, colon, [2]),                      # noqa: E731
                     AutoImageTokenGenerationProcessor(token_ids=model.token_ids, num_img_gen_tokens=64)]
    fast, slow = generate_both(model, ids, mask, procs, max_new_tokens=3 * (2 + 66) + 5)
    assert_same(fast, slow, min_blocks=3)
    # blocks start where the rule says (2 tokens after ':' / '</img>'), and text follows the last one
    assert [im.block.start - fast.prompt_length for im in fast.images[0]] == [2, 70, 138]
    assert fast.new_tokens.shape[1] == 3 * 68 + 5 and fast.new_tokens[0, -1] != model.token_ids.eoi


def test_fast_path_batched_rows_open_blocks_at_different_steps(model):
    ids, mask = left_padded(model, STORIES)
    colon = model.tokenizer.convert_tokens_to_ids(":")
    procs = lambda: [OpenBlockEvery(model.token_ids, colon, [0, 3, 8]),               # noqa: E731
                     AutoImageTokenGenerationProcessor(token_ids=model.token_ids, num_img_gen_tokens=64)]
    fast, slow = generate_both(model, ids, mask, procs, max_new_tokens=160)
    assert_same(fast, slow, min_blocks=5)
    starts = [[im.block.start - fast.prompt_length for im in row] for row in fast.images]
    assert starts[0][0] == 0 and starts[1][0] == 3 and starts[2][0] == 8          # different steps
    assert all(len(r) >= 2 for r in starts[:2])                                    # several blocks per row
    # each row as in its own unbatched run
    for b, text in enumerate(STORIES):
        sid, smask = left_padded(model, [text])
        solo = model.lvlm.generate(sid, attention_mask=smask, max_new_tokens=160,
                                   logits_processor=[OpenBlockEvery(model.token_ids, colon, [[0, 3, 8][b]]),
                                                     AutoImageTokenGenerationProcessor(token_ids=model.token_ids,
                                                                                       num_img_gen_tokens=64)],
                                   eos_token_id=model.tokenizer.eos_token_id, pad_token_id=model.tokenizer.pad_token_id)
        n = solo.new_tokens.shape[1]
        assert torch.equal(fast.new_tokens[b, :n], solo.new_tokens[0])
        assert (fast.new_tokens[b, n:] == model.tokenizer.pad_token_id).all()


def test_fast_path_caption_prompt_as_in_the_benchmark(model):
    from benchmarks.forced_block import caption_ids, run_llm
    ids = caption_ids(model)
    sp = (model.tokenizer.eos_token_id, model.tokenizer.pad_token_id)
    fast, slow = run_llm(model, ids, True, sp), run_llm(model, ids, False, sp)
    assert_same(fast, slow, min_blocks=1)


def test_prompts_ending_in_img_take_one_forward_for_prompt_and_block(model):
    caps = ["a big red circle on the left", "a small green star"]
    ids, mask = left_padded(model, [c + "<img>" for c in caps])
    calls = []
    h = model.lvlm.llm.register_forward_hook(lambda mod, args, out: calls.append(1))
    try:
        fast, slow = generate_both(model, ids, mask, lambda: None, max_new_tokens=65)
    finally:
        h.remove()
    assert len(calls) == 1 + (1 + 65)               # fast: 1 pass; step by step: the prompt, then 65 one-token passes
    assert_same(fast, slow, min_blocks=2)
    # a batch where only one prompt ends in <img>: that row gets its block as the first chunk
    ids, mask = left_padded(model, [caps[0] + "<img>", caps[1] + " ."])
    fast, slow = generate_both(model, ids, mask, lambda: None, max_new_tokens=70)
    assert_same(fast, slow, min_blocks=1)


def decisions_both(m, ids, mask, **kw):
    out = []
    for fast in (True, False):
        p = AutoImageTokenGenerationProcessor(token_ids=m.token_ids, record=True)
        r = m.lvlm.generate(ids, attention_mask=mask, logits_processor=[p], fast_forced_block=fast,
                            eos_token_id=m.tokenizer.eos_token_id, pad_token_id=m.tokenizer.pad_token_id, **kw)
        out.append((r, [d.as_dict() for d in p.decisions]))
    return out


def assert_same_decisions(a, b):
    key = lambda d: (d["step"], d["row"], d["state"], d["block_index"], d["forced_id"])     # noqa: E731
    assert [key(d) for d in a] == [key(d) for d in b]
    for x, y in zip(a, b):
        assert x["p_boi"] == pytest.approx(y["p_boi"], rel=1e-4, abs=1e-6)
        assert x["overridden_score"] == pytest.approx(y["overridden_score"], rel=1e-4, abs=1e-4)


def test_fast_path_records_the_step_by_step_decisions(model):
    """A recording processor on the fast path logs, per new token, what the step-by-step path logs."""
    ids, mask = left_padded(model, ["a big red circle on the left<img>"])
    (fast, dec_f), (slow, dec_s) = decisions_both(model, ids, mask, max_new_tokens=70)
    assert torch.equal(fast.sequences, slow.sequences)
    assert len(dec_s) == fast.new_tokens.shape[1] == 70
    assert_same_decisions(dec_f, dec_s)
    assert [d["state"] for d in dec_f[:65]] == ["inside"] * 64 + ["closing"]


@pytest.mark.skipif(not (TRAINED / "model.safetensors").is_file(), reason="data/seedx-tiny not trained yet")
def test_fast_path_records_the_step_by_step_decisions_in_a_story(shipped):
    m = shipped.eval()                               # conftest: load("seedx-tiny") = TRAINED, once per session
    ids, mask = left_padded(m, STORIES[:1])
    (fast, dec_f), (slow, dec_s) = decisions_both(m, ids, mask, max_new_tokens=150, max_blocks=2)
    assert torch.equal(fast.sequences, slow.sequences) and len(fast.images[0]) >= 1   # opened by the model
    assert len(dec_f) == len(dec_s) == fast.new_tokens.shape[1]
    assert_same_decisions(dec_f, dec_s)
    assert sum(d["state"] == "closing" for d in dec_f) == len(fast.images[0])


@pytest.mark.skipif(not (TRAINED / "model.safetensors").is_file(), reason="data/seedx-tiny not trained yet")
def test_fast_path_trained_model_story(shipped):
    m = shipped.eval()                               # conftest: load("seedx-tiny") = TRAINED, once per session
    ids, mask = left_padded(m, STORIES)
    kw = dict(attention_mask=mask, max_new_tokens=200, eos_token_id=m.tokenizer.eos_token_id,
              pad_token_id=m.tokenizer.pad_token_id, max_blocks=3)
    fast = m.lvlm.generate(ids, fast_forced_block=True, **kw)
    slow = m.lvlm.generate(ids, fast_forced_block=False, **kw)
    assert_same(fast, slow, min_blocks=len(STORIES))                          # the model opens them itself


# --------------------------------------------------------------------------- processor at 32k

def strict_per_row(token_ids, input_ids, scores):
    """Strict mode, one row at a time: the last <img> must be followed by <img_00000>.. in order."""
    F = forced_block_ids(token_ids, 64)
    out = scores.clone()
    for i, row in enumerate(input_ids.tolist()):
        nxt = None
        if F[0] in row:
            after = row[len(row) - row[::-1].index(F[0]):]
            if len(after) <= 64 and after == F[1:1 + len(after)]:
                nxt = F[len(after) + 1]
        if nxt is None:
            out[i, F[1:]] = float("-inf")
        else:
            m = scores[i].max()
            out[i] = float("-inf")
            out[i, nxt] = m + 10.0
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_processor_batch64_vocab32k_equals_per_row_reference(dtype):
    tid = bp.vocab_ids()
    ids = bp.mixed_rows(tid, 64)
    scores = bp.mixed_scores(64, 32330).to(dtype)
    proc = AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=64)
    st = proc.states(ids).state.tolist()
    assert {0, 1, 2} <= set(st)                                                 # mixed states
    before = scores.clone()
    want = bp.per_row_reference(forced_block_ids(tid, 64))(ids, scores.clone())
    assert not torch.equal(want, scores)                                       # the reference did something
    assert torch.equal(proc(ids, scores), want)
    assert torch.equal(scores, before)                                         # default: input untouched
    s = scores.clone()
    got = AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=64, inplace=True)(ids, s)
    assert got is s and torch.equal(got, want)                                 # inplace: written into s
    strict = AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=64, mode="strict")
    assert torch.equal(strict(ids, scores), strict_per_row(tid, ids, scores))
    s = scores.clone()
    strict_in = AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=64, mode="strict", inplace=True)
    assert torch.equal(strict_in(ids, s), strict_per_row(tid, ids, scores))


def test_processor_inplace_records_the_unprocessed_scores():
    tid = bp.vocab_ids()
    ids = bp.mixed_rows(tid, 64)
    scores = bp.mixed_scores(64, 32330)
    a = AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=64, record=True)
    b = AutoImageTokenGenerationProcessor(token_ids=tid, num_img_gen_tokens=64, record=True, inplace=True)
    a(ids, scores)
    b(ids, scores.clone())
    assert a.decisions == b.decisions and len(a.decisions) == 64


# --------------------------------------------------------------------------- the benchmarks run

LINE = re.compile(r"^name=(\w+)( \w+=\S+)+$")


@pytest.mark.parametrize("name, argv", [
    ("forced_block", ["--model", "random", "--repeats", "1", "--warmup", "0"]),
    ("processor", ["--repeats", "1", "--warmup", "0"]),
    ("trace_overhead", ["--model", "random", "--repeats", "1", "--warmup", "0", "--max-new-tokens", "70"]),
    ("pipeline", ["--model", "random", "--repeats", "1", "--warmup", "0", "--steps", "2"]),
    # the pools are built before the timed steps: small ones make the run quick and leave the line as it is
    ("lanes", ["--repeats", "1", "--steps", "2", "--pools", "32,24,16"]),
    # a 6-token pair (BOS and the trigger phrase): the per-cell grid it is checked against is a forward per cell
    ("patching", ["--model", "random", "--repeats", "1", "--warmup", "0", "--long-tokens", "12", "--tokens", "6"]),
])
def test_benchmark_runs_and_ends_with_its_result_line(name, argv, tmp_path, capsys):
    import importlib
    mod = importlib.import_module(f"benchmarks.{name}")
    if name == "pipeline":
        argv = argv + ["--png", str(tmp_path / "p.png")]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        line = mod.main(argv)
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == line and LINE.match(line) and line.startswith(f"name={name} ")
    if name == "pipeline":
        assert (tmp_path / "p.png").stat().st_size > 1000


def test_lanes_pools_take_three_positive_sizes():
    from benchmarks.lanes import POOLS, _pools
    assert _pools("32,24,16") == (32, 24, 16) and POOLS == (256, 96, 48)
    for bad in ("32,24", "32,0,16", "a,b,c"):
        with pytest.raises(argparse.ArgumentTypeError, match=rf"--pools takes three positive sizes .*got '{bad}'"):
            _pools(bad)


def test_patching_tokens_cut_the_pair_to_bos_and_the_trigger(model):
    from benchmarks.patching import CLEAN, cut_pair
    whole, _ = cut_pair(model, CLEAN, None, "--tokens")
    clean, corrupt = cut_pair(model, CLEAN, 6, "--tokens")
    assert whole == model.encode_ids(CLEAN) and clean == whole[:1] + whole[-5:]
    assert model.decode(clean[1:]) == "it looks like this :"
    assert corrupt == clean[:-1] + [model.tokenizer.convert_tokens_to_ids(".")]
    with pytest.raises(ValueError, match=rf"--tokens must be 3\.\.{len(whole)}, got 2"):
        cut_pair(model, CLEAN, 2, "--tokens")
