"""Each claim check of ``seedx_lab.lab.claims`` must be able to fail: every test runs the claim on
seedx-tiny and on a counterfactual it builds (another processor, sampling on, another pooling, a
suppressed ``<img>`` logit, ...) and asserts that the verdict follows the measurement and flips.
Sizes are small (n = 1-8) to keep the suite fast; claim 7's counterfactual is decided by an interval of the
difference of two rates, so it needs the most."""
from __future__ import annotations

import math
from contextlib import contextmanager

import numpy as np
import pytest
import torch

import seedx_lab
from seedx_lab.generation import AutoImageTokenGenerationProcessor
from seedx_lab.lab import claims as C


@pytest.fixture(scope="module")
def model(shipped):
    # conftest: load("seedx-tiny"), once per session; a test here that changes the model puts it back (a finally,
    # monkeypatch or a removed hook), and the claims seed what they sample
    return shipped


@contextmanager
def hooked(module, fn):
    """Replace ``module``'s output by ``fn(output)`` while inside."""
    h = module.register_forward_hook(lambda mod, args, out: fn(out))
    try:
        yield
    finally:
        h.remove()


def no_boi(model):
    """A model whose lm head can never make <img> win: its logit is pushed down by 1e4."""
    boi = model.token_ids.boi

    def fn(out):
        out = out.clone()
        out[..., boi] -= 1e4
        return out
    return hooked(model.lvlm.llm.get_output_embeddings(), fn)


# --------------------------------------------------------------------------- the record types

def test_wilson_matches_closed_forms():
    z = 1.96
    lo, hi = C.wilson(0, 10)
    assert lo == 0.0 and math.isclose(hi, z * z / (10 + z * z), rel_tol=1e-12)
    lo, hi = C.wilson(10, 10)
    assert hi == 1.0 and math.isclose(lo, 10 / (10 + z * z), rel_tol=1e-12)
    lo, hi = C.wilson(30, 100)                       # symmetric around the Wilson centre, not around 0.3
    centre = (0.3 + z * z / 200) / (1 + z * z / 100)
    assert math.isclose((lo + hi) / 2, centre, rel_tol=1e-12) and lo < 0.3 < hi
    with pytest.raises(ValueError, match="k=3, n=2"):
        C.Rate(3, 2)


def test_newcombe_matches_the_published_examples():
    # Newcombe (1998), Statistics in Medicine 17:873, table II, method 10: 56/70 - 48/80 and 9/10 - 3/10
    lo, hi = C.newcombe(56, 70, 48, 80)
    assert math.isclose(lo, 0.0524, abs_tol=5e-5) and math.isclose(hi, 0.3339, abs_tol=5e-5)
    lo, hi = C.newcombe(9, 10, 3, 10)
    assert math.isclose(lo, 0.1705, abs_tol=5e-5) and math.isclose(hi, 0.8090, abs_tol=5e-5)
    assert C.newcombe(2, 4, 2, 4)[0] < 0 < C.newcombe(2, 4, 2, 4)[1]
    with pytest.raises(ValueError, match="n1=0"):
        C.newcombe(0, 0, 1, 2)


def test_ledger_counts_and_last_line():
    rows = [C.ClaimResult(i, f"c{i}", "s", "p", {}, v, "e")
            for i, v in enumerate([C.HOLDS, C.FAILS, C.FAILS, C.CAVEAT, C.NOT_MEASURED], start=1)]
    led = C.Ledger(rows)
    assert led.summary() == ("claims=5 measured=4 holds=1 holds_with_caveat=1 fails=2 unlike_published=0 "
                             "not_measured=1")
    assert str(led).splitlines()[-1] == led.summary()
    assert led[2].verdict == C.FAILS
    with pytest.raises(ValueError, match="verdict must be one of"):
        C.ClaimResult(1, "c", "s", "p", {}, "true", "e")


def test_ledger_keeps_a_broken_measurement_as_a_row(model, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom")
    monkeypatch.setattr(C, "claim10", broken)
    led = C.ledger(model, only=[10, 5])
    assert [r.id for r in led.results] == [5, 10]
    assert led[10].verdict == C.NOT_MEASURED and "boom" in led[10].evidence
    assert led.summary().startswith("claims=2 measured=1 ")
    with pytest.raises(ValueError, match="numbered 1-12"):
        C.ledger(model, only=[13])


# --------------------------------------------------------------------------- claims 1, 2

def test_claim1_flips_when_the_resampler_keeps_fewer_queries(model):
    r = C.claim1(model)
    assert r.verdict == C.HOLDS and r.measured["resampler_out"] == 64 and r.measured["vit_tokens"] == 256
    class KeepHalf(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config       # the block length is read from the input resampler's config

        def forward(self, x):
            return self.inner(x)[:, :32]
    real = model.lvlm.input_resampler
    model.lvlm.input_resampler = KeepHalf(real)        # (monkeypatch would delattr a submodule on undo)
    try:
        r2 = C.claim1(model)
    finally:
        model.lvlm.input_resampler = real
    assert r2.measured["resampler_out"] == 32 and r2.verdict == C.FAILS


def test_claim2_sees_a_2d_pool(model, monkeypatch):
    r = C.claim2(model)
    assert r.measured["features_out"] == 64
    assert r.verdict == (C.FAILS if r.measured["target_is_1d_pool"] else C.UNLIKE)
    assert r.measured["target_is_1d_pool"] != r.measured["target_is_2d_pool"]
    monkeypatch.setattr(model.lvlm, "target_pool", "2d")
    r2 = C.claim2(model)
    assert r2.measured["target_is_2d_pool"] and not r2.measured["target_is_1d_pool"]
    assert r2.verdict == C.UNLIKE != r.verdict


# --------------------------------------------------------------------------- claims 3, 5, 6: <img>

def test_claim3_flips_when_img_is_never_predicted(model):
    r = C.claim3(model, n=3)
    rec = r.measured["recall"]
    assert r.verdict == (C.FAILS if rec.lo > 0.5 else C.HOLDS if rec.hi < 0.5 else C.CAVEAT)
    assert r.measured["boi_labelled_in_training"]
    with no_boi(model):
        r2 = C.claim3(model, n=3)
    assert r2.measured["recall"].k == 0 and r2.verdict == C.HOLDS
    assert r.verdict != r2.verdict


class BlocksBoiToo(AutoImageTokenGenerationProcessor):
    """A counterfactual processor that also bans <img> outside a block."""

    def __call__(self, input_ids, scores):
        out = super().__call__(input_ids, scores)
        outside = self.states(input_ids.to(scores.device)).state == 0
        out[outside, self.token_ids.boi] = float("-inf")
        return out


def test_claim5_flips_when_the_processor_blocks_img(model):
    r = C.claim5(model)
    assert r.verdict == C.HOLDS and not r.measured["boi_in_blocked_set"]
    r2 = C.claim5(model, processors=[BlocksBoiToo(token_ids=model.token_ids)])
    assert r2.measured["boi_score_changed"].k == r2.measured["boi_score_changed"].n > 0
    assert r2.verdict == C.FAILS


def test_claim6_flips_when_img_is_suppressed(model):
    r = C.claim6(model, n=2, max_new_tokens=120)
    m = r.measured
    assert r.verdict == (C.FAILS if m["second_boi_teacher_forced"].k or m["openings_with_two_or_more"].k else C.CAVEAT)
    with no_boi(model):
        r2 = C.claim6(model, n=2, max_new_tokens=40)
    assert r2.measured["second_boi_teacher_forced"].k == 0 and r2.measured["openings_with_two_or_more"].k == 0
    assert r2.verdict == C.CAVEAT
    assert r.verdict == C.FAILS, "seedx-tiny was trained on stories with several pictures"


# --------------------------------------------------------------------------- claims 4, 8, 9: processor, decoding

def test_claim4_faithful_leaks_probability_strict_does_not(model):
    faithful = C.claim4(model, n=1)
    strict = C.claim4(model, n=1, mode="strict")
    # 0.0 is exp(0) > 0 of probability per blocked token, whatever the model: sampling can pick one
    assert faithful.measured["sampling_mass_mean"] > 0 and faithful.verdict in (C.CAVEAT, C.FAILS)
    assert strict.measured["sampling_mass_max"] == 0 and strict.measured["greedy_wins"].k == 0
    assert strict.verdict == C.HOLDS
    assert faithful.measured["positions"] == strict.measured["positions"]


def test_claim4_fails_when_every_text_logit_is_negative(model):
    # a softmax-preserving shift (row - max - 1) leaves the model's beliefs as they are and makes 0.0 the top score
    with hooked(model.lvlm.llm.get_output_embeddings(), lambda out: out - out.amax(-1, keepdim=True) - 1.0):
        r = C.claim4(model, n=1)
    assert r.measured["greedy_wins"].k == r.measured["greedy_wins"].n and r.verdict == C.FAILS


def test_claim8_flips_with_a_32_token_processor(model):
    r = C.claim8(model, n=1)
    assert r.measured["block_sizes"] == [64] and r.measured["cut_images_returned"] == 0
    assert r.verdict == C.CAVEAT
    short = AutoImageTokenGenerationProcessor(token_ids=model.token_ids, num_img_gen_tokens=32, mode="strict")
    r2 = C.claim8(model, n=1, processor=short)
    assert 32 in r2.measured["block_sizes"] and r2.verdict == C.FAILS


def test_claim9_published_call_is_greedy_sampling_is_not(model):
    r = C.claim9(model, n=2, seeds=2, max_new_tokens=8)
    assert r.measured["equal_to_greedy"].k == r.measured["equal_to_greedy"].n and r.verdict == C.FAILS
    r2 = C.claim9(model, n=2, seeds=3, do_sample=True, max_new_tokens=8)
    assert r2.measured["equal_to_greedy"].k < r2.measured["equal_to_greedy"].n and r2.verdict == C.HOLDS


# --------------------------------------------------------------------------- claim 10: any-res

def aspect_rule(w0, h0, cands):
    """The aspect rule written out again: closest h/w ratio (as a ratio >= 1), then closest area, first wins."""
    best = None
    for w, h in cands:
        ratio = (h / w) / (h0 / w0)
        area = (w * h) / (w0 * h0)
        key = (ratio if ratio >= 1 else 1 / ratio, area if area >= 1 else 1 / area)
        if best is None or key < best[0]:
            best = (key, (w, h))
    return best[1]


def test_anyres_against_transformers_and_an_independent_aspect_rule():
    from transformers.image_processing_utils import select_best_resolution

    from seedx_lab.anyres import PINPOINTS, choose_resolution, tile_positions

    grids = [tuple(int(v) for v in g.split("x")) for g in PINPOINTS]
    cands = [(c * 448, r * 448) for c, r in grids]
    rng = np.random.default_rng(1)
    for w, h in rng.integers(16, 4000, size=(600, 2)).tolist():
        hb, wb = select_best_resolution((h, w), [(ch, cw) for cw, ch in cands])
        asp = aspect_rule(w, h, cands)
        want = asp if asp[0] * asp[1] < wb * hb else (wb, hb)
        d = choose_resolution((w, h))
        assert d.chosen == want, (w, h)
        C_, R_ = want[0] // 448, want[1] // 448
        centres = [((c + .5) / C_, (r + .5) / R_) for r in range(R_) for c in range(C_)] + [(.5, .5)]
        assert torch.allclose(tile_positions(d.grid), torch.tensor(centres))


def test_claim10_flips_when_tiles_keep_the_ratio():
    r = C.claim10(n=500)
    assert r.measured["llava_matches_transformers"].k == 500 and r.verdict == C.CAVEAT
    r2 = C.claim10(n=50, keep_ratio=True)
    assert r2.measured["stretched"].k == 0 < r2.measured["stretched"].n and r2.verdict == C.UNLIKE


# --------------------------------------------------------------------------- claims 7, 11, 12

def claim7_rule(m):
    """Claim 7's verdict written out again from its numbers."""
    d, f = m["judge_reading_differs"], m["judge_floor"]
    if not m["block_deterministic"] or C.newcombe(d.k, d.n, f.k, f.n)[0] > 0:
        return C.FAILS
    return C.CAVEAT if m["mean_pixel_diff"] > 0 else C.HOLDS


def test_claim7_identical_seeds_show_no_variety(model):
    r = C.claim7(model, n=2, seeds=(0, 1), num_inference_steps=2, sample_runs=1)
    assert r.measured["block_deterministic"] and r.measured["mean_pixel_diff"] > 0
    assert r.verdict == claim7_rule(r.measured) and r.measured["difference_ci"] == C.newcombe(
        r.measured["judge_reading_differs"].k, 2, r.measured["judge_floor"].k, 2)
    same = C.claim7(model, n=2, seeds=(3, 3), num_inference_steps=2, sample_runs=1)
    assert same.measured["mean_pixel_diff"] == 0 and same.measured["judge_reading_differs"].k == 0
    assert same.measured["judge_floor"].k == 0 and same.verdict == C.HOLDS


def test_claim7_fails_when_the_seed_decides_what_is_drawn(model, monkeypatch):
    # a de-tokenizer whose noise seed picks the picture: seed s draws the features of the caption s places on
    real = model.draw

    def draw(features, num_inference_steps=None, seed=0, **kw):
        return real(features.roll(int(seed), dims=0), num_inference_steps=num_inference_steps, seed=0, **kw)
    monkeypatch.setattr(model, "draw", draw)
    r = C.claim7(model, n=8, seeds=(0, 1), num_inference_steps=5, sample_runs=1)
    m = r.measured
    assert m["block_deterministic"] and m["judge_reading_differs"].k > m["judge_floor"].k
    assert m["difference_ci"][0] > 0 and r.verdict == C.FAILS == claim7_rule(m)


def test_claim7_fails_when_the_block_is_not_a_function_of_the_prompt(model):
    g = torch.Generator().manual_seed(0)
    with hooked(model.lvlm.llm.model.norm, lambda out: out + torch.randn(out.shape, generator=g).to(out)):
        r = C.claim7(model, n=1, seeds=(0, 0), num_inference_steps=1, sample_runs=1)
    assert not r.measured["block_deterministic"] and r.verdict == C.FAILS


def test_claim11_flips_against_a_rival_with_fewer_tokens(model):
    r = C.claim11(model)
    assert r.measured["llm_steps_per_image"] == 65 and r.measured["llm_passes_fast_path"] == 1
    assert r.measured["rivals"] == {"Janus": 576, "Chameleon": 1024}
    assert r.verdict == C.CAVEAT and r.measured["unet_passes_per_image"] == model.config.num_inference_steps
    r2 = C.claim11(model, rivals={"a 16-token VQ model": 16}, num_inference_steps=2)
    assert r2.measured["unet_passes_per_image"] == 2 and r2.verdict == C.FAILS


def test_claim12_fails_when_the_features_are_blank(model):
    r = C.claim12(model, n=3, steps=(1, 3))
    top = r.measured["table"][3]["all"]
    assert set(r.measured["table"]) == {1, 3} and set(r.measured["table"][1]) == set(C.JUDGE_KEYS)
    assert (r.verdict == C.FAILS) == (top.k == 0)
    with hooked(model.lvlm.output_resampler, lambda out: torch.zeros_like(out)):
        r2 = C.claim12(model, n=3, steps=(1, 3))
    assert r2.measured["table"][3]["all"].k == 0 and r2.verdict == C.FAILS
    assert r.verdict != r2.verdict


def test_cli_claims_runs_on_its_threads_and_gives_them_back(capsys, monkeypatch):
    from seedx_lab.cli import main

    before = torch.get_num_threads()
    seen = []
    real = C.claim10
    monkeypatch.setattr(C, "claim10", lambda: (seen.append(torch.get_num_threads()), real(n=20))[1])
    torch.set_num_threads(2)
    try:
        assert main(["claims", "--only", "10", "--threads", "1", "--no-progress"]) == 0
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("claims=1 measured=1 ")
    with pytest.raises(SystemExit):
        main(["claims", "--threads", "0"])
