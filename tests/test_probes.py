"""seedx_lab.probes: the BOI logit lens, 0.0-vs--inf blocking counts, interleaved generation."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from seedx_lab import probes
from seedx_lab import tokens as T
from seedx_lab.generation import blocked_token_would_win
from seedx_lab.model import SeedX, SeedXConfig

pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

WORDS = "a red circle . here it is :".split()


def make_model():
    tok = T.build_tokenizer(WORDS)
    torch.manual_seed(0)
    return SeedX(SeedXConfig.tiny(len(tok)), tok).eval()


@pytest.fixture(scope="module")
def model():
    return make_model()


def constant_logits(model, bias: torch.Tensor) -> None:
    """Make the LLM's logits equal ``bias`` at every position (zero weight, a bias)."""
    llm = model.lvlm.llm
    head = nn.Linear(llm.config.hidden_size, llm.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(bias)
    llm.lm_head = head


@torch.no_grad()
def test_boi_trace_lens_last_row_is_the_final_softmax(model):
    b = probes.boi_trace(model, "a red circle . here it is :")
    ids = torch.tensor([b.ids])
    L = model.config.llm.num_hidden_layers
    assert b.p_lens.shape == (L + 1, len(b.ids)) and b.p_final.shape == (len(b.ids),)
    assert b.tokens[0] == "<s>" and b.tokens[1:4] == ["a", "red", "circle"] and b.prompt_length == len(b.ids)
    np.testing.assert_allclose(b.p_lens[-1], b.p_final, rtol=1e-5, atol=1e-7)
    # against a plain forward: final row = softmax of the logits; lens row 1 = norm + head on layer 0
    out = model.lvlm.llm(input_ids=ids, output_hidden_states=True)
    boi = model.token_ids.boi
    np.testing.assert_allclose(b.p_final, out.logits[0].float().softmax(-1)[:, boi].numpy(), rtol=1e-4, atol=1e-7)
    llm = model.lvlm.llm
    lens1 = llm.lm_head(llm.model.norm(out.hidden_states[1]))[0].softmax(-1)[:, boi]
    np.testing.assert_allclose(b.p_lens[1], lens1.numpy(), rtol=1e-4, atol=1e-7)
    assert not np.allclose(b.p_lens[0], b.p_final)             # the lens does change across layers


@torch.no_grad()
def test_boi_trace_generate_follows_the_kv_cache_loop(model):
    b = probes.boi_trace(model, "a red circle", generate=True, max_new_tokens=6)
    assert len(b.ids) == b.prompt_length + 6
    full = model.lvlm.llm(input_ids=torch.tensor([b.ids])).logits[0].float().softmax(-1)[:, model.token_ids.boi]
    np.testing.assert_allclose(b.p_final, full.numpy(), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(b.p_lens[-1], b.p_final, rtol=1e-5, atol=1e-7)
    fig = b.plot()
    assert len(fig.axes) == 3                                   # heat map, line, colour bar
    assert fig.axes[0].images[0].get_array().shape == b.p_lens.shape


def test_compare_blocking_all_negative_logits_a_zero_blocked_token_always_wins():
    m = make_model()
    V = m.config.llm.vocab_size
    bias = -1.5 - torch.rand(V, generator=torch.Generator().manual_seed(0))   # every logit in (-2.5, -1.5)
    red = m.tokenizer.convert_tokens_to_ids("red")
    bias[red] = -1.0                                                         # best unblocked token
    bias[m.token_ids.boi] = -5.0                                             # never start a block
    constant_logits(m, bias)
    assert bool(blocked_token_would_win(bias[None], m.token_ids).item())     # the premise, by hand
    prompts, n = ["a red circle", "here it is :"], 5
    c = probes.compare_blocking(m, prompts, max_new_tokens=n)
    f, s = c.faithful, c.strict
    total = len(prompts) * n
    # faithful: the blocked tokens become 0.0 > every other logit; argmax = the lowest blocked id = </img>,
    # which leaves the row outside a block, so this repeats at every step
    assert (f.prompts, f.new_tokens, f.outside_steps, f.would_win, f.chose_blocked, f.stray_tokens) == \
        (2, total, total, total, total, total)
    assert f.would_win_rate == 1.0 and f.stray_rate == 1.0
    assert all(o == " ".join([T.EOI_TOKEN] * n) for o in c.outputs["faithful"])
    # strict: the same raw scores (would_win counts them) but -inf bans: "red" every time
    assert (s.outside_steps, s.would_win, s.chose_blocked, s.stray_tokens) == (total, total, 0, 0)
    assert all(o == " ".join(["red"] * n) for o in c.outputs["strict"])
    assert [r["mode"] for r in c.table()] == ["faithful", "strict"]


def test_compare_blocking_on_a_random_model_is_self_consistent(model):
    c = probes.compare_blocking(model, ["a red circle", "here it is :", "circle ."], max_new_tokens=12)
    for s in (c.faithful, c.strict):
        assert s.new_tokens == 36 and 0 < s.outside_steps <= 36
    # greedy + faithful: a blocked token is chosen exactly when 0.0 makes it the argmax
    assert c.faithful.chose_blocked == c.faithful.would_win
    assert c.strict.chose_blocked == 0 and c.strict.stray_tokens == 0
    # image tokens past the 64 a block uses (<img_00064>..<img_00099>) are blocked by neither mode
    n_unblocked = sum(o.count("<img_000") - sum(o.count(T.IMG_TOKEN.format(i)) for i in range(64))
                      for o in c.outputs["strict"])
    assert c.strict.unblocked_image_tokens == n_unblocked


def test_interleave_starts_images_only_where_the_model_predicts_img():
    m = make_model()
    V = m.config.llm.vocab_size
    bias = -1.0 - torch.rand(V, generator=torch.Generator().manual_seed(1))
    bias[m.token_ids.boi] = 4.0                   # the model wants an image whenever it is free to choose
    bias[m.tokenizer.convert_tokens_to_ids("red")] = 1.0
    constant_logits(m, bias)
    p_expected = float(bias.float().softmax(-1)[m.token_ids.boi])
    r = probes.interleave(m, "a red circle .", max_images=2, max_new_tokens=140, num_inference_steps=1)
    T0 = r.result.output.prompt_length
    assert r.boi_positions == [T0, T0 + 66]                      # <img>, 64 tokens, </img>, <img> again
    np.testing.assert_allclose(r.p_boi, [p_expected] * 2, rtol=1e-5)
    assert r.capped and len(r.images) == 2
    kinds = [type(s).__name__ for s in r.segments]
    assert kinds == ["Image", "Image", "str"] and r.segments[2] == " ".join(["red"] * 8)
    pos, p = r.p_boi_curve()
    assert len(pos) == 2 + 8 and pos[0] == T0 - 1 and pos[1] == T0 + 65   # outside steps: 2 starts, 8 words
    np.testing.assert_allclose(p[:2], p_expected, rtol=1e-5)
    assert np.all(p[2:] == 0.0)                                  # capped: <img> banned before the processor
    with pytest.raises(ValueError, match="ends in <img>"):
        probes.interleave(m, "a red circle <img>")


# --------------------------------------------------------------------------- causal probes

CLEAN, CORRUPT = "a red circle . here it is :", "a red circle . here it is ."


@torch.no_grad()
def test_batched_patching_grid_equals_one_run_per_cell_and_the_metric_has_its_ends(model):
    g = probes.activation_patching(model, CLEAN, CORRUPT)
    ref = probes.activation_patching(model, CLEAN, CORRUPT, batched=False)
    chunked = probes.activation_patching(model, CLEAN, CORRUPT, batch_size=7)
    L = model.config.llm.num_hidden_layers
    P = len(model.encode_ids(CLEAN))
    assert g.raw_denoise.shape == g.raw_noise.shape == (L + 1, P)
    np.testing.assert_allclose(g.raw_denoise, ref.raw_denoise, atol=1e-5, rtol=0)
    np.testing.assert_allclose(g.raw_noise, ref.raw_noise, atol=1e-5, rtol=0)
    np.testing.assert_allclose(chunked.raw_denoise, ref.raw_denoise, atol=1e-5, rtol=0)
    # the last layer at the last position is the whole decision: 1 one way, 0 the other; the prompts
    # agree before their last token, so patching there does nothing
    assert abs(g.denoise[-1, -1] - 1) < 1e-4 and abs(g.noise[-1, -1]) < 1e-4
    np.testing.assert_allclose(g.denoise[:, :-1], 0, atol=1e-4)
    with pytest.raises(ValueError, match="same token length"):
        probes.activation_patching(model, CLEAN, "a red circle :")


@torch.no_grad()
def test_knockout_windows_in_one_batch_equal_separate_runs(model):
    from seedx_lab.lab import trace as tr

    k = probes.attention_knockout(model, CLEAN, "here it is", window=2)
    assert k.keys == probes.find_phrase(model, model.encode_ids(CLEAN), "here it is")
    ids = torch.tensor([model.encode_ids(CLEAN)])
    boi = model.token_ids.boi
    for w, p in zip(k.windows, k.p_knocked):
        with tr.trace(model, capture=[], edits={f"llm.layers.{i}.attn": tr.knockout(k.keys) for i in w}):
            ref = model.lvlm.llm(input_ids=ids).logits[0, -1].softmax(-1)[boi].item()
        assert abs(ref - p) < 1e-6
    assert abs(k.p_base - model.lvlm.llm(input_ids=ids).logits[0, -1].softmax(-1)[boi].item()) < 1e-6
    with pytest.raises(ValueError, match="not in the prompt"):
        probes.attention_knockout(model, CLEAN, "blue")


def _stories(seed, n):
    """Word salad from the test vocabulary; a picture follows each "here it is :" (and only it)."""
    rng = np.random.default_rng(seed)
    words = "a red circle .".split()
    out = []
    for _ in range(n):
        segs = []
        for _ in range(rng.integers(1, 3)):
            segs += [" ".join(rng.choice(words, rng.integers(2, 6))) + " here it is :", None]
        segs.append(" ".join(rng.choice(words, 3)))
        out.append(segs)
    return out


@torch.no_grad()
def test_linear_probe_is_scored_on_held_out_positions_and_its_shuffled_control_is_near_chance(model):
    train, test = probes.story_states(model, _stories(0, 12)), probes.story_states(model, _stories(1, 12))
    lp = probes.linear_probes(model, train, test, shuffles=5, steps=60)
    assert lp.n_train == len(train.y) and lp.n_test == len(test.y) and lp.pos_test == int(test.y.sum()) > 0
    # the label is the ':' token itself, so the embedding already separates it, on new stories too
    assert lp.acc[0] > 0.95
    # (at the embedding the features take a handful of values, so one permutation can land on ':' by
    # luck; the layers mix context in and the control has no such foothold)
    assert np.all(np.abs(lp.acc_shuffled[1:] - 0.5) < 0.2) and abs(lp.acc_shuffled.mean() - 0.5) < 0.2
    # held out means held out: the accuracy equals a probe fitted on train and scored on test by hand
    f = probes.fit_logistic(train.x[2], train.y, steps=60)
    pred = f(test.x[2]) >= 0.5
    by_hand = 0.5 * (pred[test.y].mean() + (~pred[~test.y]).mean())
    assert abs(by_hand - lp.acc[2]) < 1e-12


def test_calibration_bins_and_precision_recall_against_hand_counts():
    p = np.array([0.05, 0.15, 0.15, 0.95, 0.85, 0.55])
    y = np.array([0, 0, 1, 1, 1, 0], dtype=bool)
    c = probes.calibration_from(p, y, bins=10)
    assert c.bin_count.sum() == 6 and c.bin_count[1] == 2 and c.bin_freq[1] == 0.5
    assert abs(c.ece - (0.05 + 2 * abs(0.15 - 0.5) + 0.05 + 0.15 + 0.55) / 6) < 1e-12
    # ranked 0.95(1) 0.85(1) 0.55(0) 0.15,0.15(1,0) 0.05(0): precision at each distinct threshold
    np.testing.assert_allclose(c.precision, [1, 1, 2 / 3, 3 / 5, 3 / 6])
    np.testing.assert_allclose(c.recall, [1 / 3, 2 / 3, 2 / 3, 1, 1])
    assert abs(c.average_precision - (1 / 3 + 1 / 3 + 1 / 3 * 3 / 5)) < 1e-12


def test_count_irregular_image_tokens(model):
    tid = model.token_ids
    n = model.lvlm.num_img_tokens
    extra = {tid.img[n]} if len(tid.img) > n else {-7}
    x = next(iter(extra))
    full = [tid.boi, *tid.img[:n], tid.eoi]
    seq = [1, 2] + full + [5, tid.eoi, x, tid.boi, *tid.img[:3], 5, tid.boi, *tid.img[:4]]
    c = probes.count_irregular(seq, 2, tid, n, extra)
    assert c == dict(stray_eoi=1, unforced_img=1, unfinished=1, cut_by_budget=1, blocks=3)
