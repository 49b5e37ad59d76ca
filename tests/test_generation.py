import math
import random
import warnings

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessor, LogitsProcessorList

from seedx_lab import tokens as T
from seedx_lab.generation import (
    CLOSING, INSIDE, OUTSIDE,
    AutoImageTokenGenerationProcessor as Proc,
    blocked_token_mass, blocked_token_would_win, forced_block_ids,
)

N = 64


@pytest.fixture(scope="module")
def tok():
    return T.build_tokenizer(["a", "red", "circle", "."])


@pytest.fixture(scope="module")
def ids(tok):
    return T.ImageTokenIds.from_tokenizer(tok, N)


# --------------------------------------------------------------------------- per-row reference

def reference_process(proc, input_ids, scores):
    """Straightforward per-row version of both modes, written from the spec, one row at a time."""
    F = forced_block_ids(proc.token_ids, proc.num_img_gen_tokens)
    boi, body = F[0], F[1:-1]
    out = scores.clone()
    L = input_ids.shape[1]
    short = proc.max_length is not None and proc.max_length - L < N + 2
    for i in range(scores.shape[0]):
        row = input_ids[i].tolist()
        nxt = None
        if proc.mode == "faithful":          # published: the last token and its index in F[:-1]
            if row and row[-1] in F[:-1]:
                nxt = F[F.index(row[-1]) + 1]
        else:                                # strict: walk back to the last <img>, check the run after it
            if boi in row:
                start = len(row) - 1 - row[::-1].index(boi)
                after = row[start + 1:]
                if len(after) <= N and after == body[:len(after)]:
                    nxt = F[len(after) + 1]
        if nxt is not None:
            m = scores[i].max()
            if proc.mode == "strict":
                out[i, :] = float("-inf")
            out[i, nxt] = m + 10.0
        else:
            for t in F[1:]:
                out[i, t] = 0.0 if proc.mode == "faithful" else float("-inf")
            if proc.mode == "strict" and short:
                out[i, boi] = float("-inf")
    return out


def left_pad(rows, pad=0):
    L = max(len(r) for r in rows)
    return torch.tensor([[pad] * (L - len(r)) + r for r in rows])


def state_rows(tok, ids):
    """Named rows in different states. Returns (names, input_ids)."""
    text = tok.encode("a red circle .", add_special_tokens=False)
    img = list(ids.img)
    rows = {
        "outside": text,
        "after_boi": text + [ids.boi],                          # -> img_0
        "k37": text + [ids.boi] + img[:37],                     # -> img_37
        "k63": text + [ids.boi] + img[:63],                     # -> img_63
        "closing": text + [ids.boi] + img[:64],                 # -> </img>
        "after_eoi": text + [ids.boi] + img[:64] + [ids.eoi],   # outside again
        "patch": text + [ids.bop] + img[:2],                    # faithful: -> img_2 ; strict: outside
        "stray": text + [img[5]],                               # faithful: -> img_6 ; strict: outside
        "broken": [ids.boi, img[0], img[3]],                    # faithful: -> img_4 ; strict: outside
        "second_block": [ids.boi] + img[:64] + [ids.eoi] + text + [ids.boi, img[0]],  # -> img_1
    }
    return list(rows), left_pad(list(rows.values()))


def random_rows(ids, n_rows, seed):
    """Random sequences stitched from text, partial/whole blocks, patch blocks and stray tokens."""
    rng = random.Random(seed)
    img = list(ids.img)
    rows = []
    for _ in range(n_rows):
        row = []
        for _ in range(rng.randint(1, 4)):
            kind = rng.choice(["text", "block", "partial", "full", "patch", "stray", "boi"])
            if kind == "text":
                row += [rng.randint(4, 7) for _ in range(rng.randint(1, 3))]
            elif kind == "block":
                row += [ids.boi] + img[:N] + [ids.eoi]
            elif kind == "partial":
                row += [ids.boi] + img[:rng.randint(0, N)]
            elif kind == "full":                                  # 64 tokens, </img> still to come
                row += [ids.boi] + img[:N]
            elif kind == "patch":
                row += [ids.bop] + img[:rng.randint(0, N)]
            elif kind == "stray":
                row += [rng.choice(img + [ids.eoi])]
            else:
                row += [ids.boi]
        rows.append(row)
    return left_pad(rows)


# --------------------------------------------------------------------------- construction

def test_forced_block_ids(ids):
    F = forced_block_ids(ids, N)
    assert len(F) == N + 2 and F[0] == ids.boi and F[-1] == ids.eoi and F[1:-1] == list(ids.img)
    assert forced_block_ids(ids, 3) == [ids.boi, *ids.img[:3], ids.eoi]


def test_bad_arguments(tok, ids):
    with pytest.raises(ValueError, match="'faithful', 'strict'"):
        Proc(tok, mode="lenient")
    with pytest.raises(ValueError, match="tokenizer"):
        Proc()
    with pytest.raises(ValueError, match="only 64 image tokens"):
        Proc(token_ids=ids, num_img_gen_tokens=65)
    with pytest.raises(ValueError, match="max_length"):
        Proc(tok, max_length=0)
    p = Proc(tok)
    with pytest.raises(ValueError, match=r"\[batch, vocab\]"):
        p(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, len(tok)))
    with pytest.raises(ValueError, match="vocabulary"):
        p(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 50))
    with pytest.raises(ValueError, match="rows"):
        p(torch.zeros(3, 3, dtype=torch.long), torch.zeros(2, len(tok)))
    with pytest.raises(ValueError, match="integer"):
        p(torch.zeros(2, 3), torch.zeros(2, len(tok)))


def test_token_ids_with_more_image_tokens_uses_the_first_n(tok):
    ids100 = T.ImageTokenIds.from_tokenizer(tok, 100)
    p = Proc(token_ids=ids100)
    assert p.forced_ids == forced_block_ids(ids100, 64)
    # <img_00063> closes the block; <img_00064> is not part of it
    x = torch.tensor([[ids100.boi, *ids100.img[:64]]])
    assert p.states(x).forced_id.tolist() == [ids100.eoi]


# --------------------------------------------------------------------------- states and values

def test_states_of_hand_built_rows(tok, ids):
    names, x = state_rows(tok, ids)
    img = ids.img
    expect = {  # name: (faithful (state, k, forced), strict (state, k, forced))
        "outside": ((OUTSIDE, -1, -1),) * 2,
        "after_boi": ((INSIDE, 0, img[0]),) * 2,
        "k37": ((INSIDE, 37, img[37]),) * 2,
        "k63": ((INSIDE, 63, img[63]),) * 2,
        "closing": ((CLOSING, 64, ids.eoi),) * 2,
        "after_eoi": ((OUTSIDE, -1, -1),) * 2,
        "patch": ((INSIDE, 2, img[2]), (OUTSIDE, -1, -1)),
        "stray": ((INSIDE, 6, img[6]), (OUTSIDE, -1, -1)),
        "broken": ((INSIDE, 4, img[4]), (OUTSIDE, -1, -1)),
        "second_block": ((INSIDE, 1, img[1]),) * 2,
    }
    for m, mode in enumerate(("faithful", "strict")):
        st = Proc(tok, mode=mode).states(x)
        got = list(zip(st.state.tolist(), st.k.tolist(), st.forced_id.tolist()))
        assert got == [expect[nm][m] for nm in names], mode


@pytest.mark.parametrize("mode", ["faithful", "strict"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_matches_per_row_reference_on_hand_built_rows(tok, ids, mode, dtype):
    names, x = state_rows(tok, ids)
    g = torch.Generator().manual_seed(0)
    scores = (torch.randn(len(names), len(tok), generator=g) * 3).to(dtype)
    before = scores.clone()
    p = Proc(tok, mode=mode)
    out = p(x, scores)
    assert torch.equal(scores, before), "the input scores must not be modified"
    assert out.dtype == dtype
    assert torch.equal(out, reference_process(p, x, scores))


@pytest.mark.parametrize("mode", ["faithful", "strict"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_matches_per_row_reference_on_random_batches(tok, ids, mode, dtype, seed):
    x = random_rows(ids, 64, seed)
    g = torch.Generator().manual_seed(seed)
    shift = torch.randn(64, 1, generator=g) * 4            # some rows all negative, some not
    scores = (torch.randn(64, len(tok), generator=g) * 2 + shift).to(dtype)
    p = Proc(tok, mode=mode)
    st = p.states(x).state
    assert {OUTSIDE, INSIDE, CLOSING} <= set(st.tolist())  # the fuzz covers every state
    assert torch.equal(p(x, scores), reference_process(p, x, scores))
    # with the budget rule switched on, strict also bans <img> in outside rows
    pb = Proc(tok, mode=mode, max_length=x.shape[1] + 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert torch.equal(pb(x, scores), reference_process(pb, x, scores))


def test_faithful_values_are_the_published_arithmetic(tok, ids):
    names, x = state_rows(tok, ids)
    scores = torch.randn(len(names), len(tok)) - 5.0        # all logits negative
    out = Proc(tok)(x, scores)
    r = names.index("k37")
    assert out[r, ids.img[37]] == scores[r].max() + 10     # assigned, not added
    others = torch.ones(len(tok), dtype=torch.bool)
    others[ids.img[37]] = False
    assert torch.equal(out[r, others], scores[r, others])   # nothing else touched
    r = names.index("outside")
    blocked = list(ids.img) + [ids.eoi]
    assert torch.all(out[r, blocked] == 0.0)
    assert out[r, ids.boi] == scores[r, ids.boi]            # <img> is never blocked
    # with all logits negative, the "blocked" 0.0 wins: not a ban
    assert out[r].argmax().item() in blocked


def test_strict_forcing_cannot_be_escaped_by_sampling(tok, ids):
    names, x = state_rows(tok, ids)
    scores = torch.zeros(len(names), len(tok))              # flat: every token near the max
    forced_rows = [names.index(n) for n in ("after_boi", "k37", "k63", "closing")]
    pf = Proc(tok, mode="faithful")(x, scores).softmax(-1)
    ps = Proc(tok, mode="strict")(x, scores).softmax(-1)
    for r in forced_rows:
        assert ps[r].max() == 1.0 and (ps[r] > 0).sum() == 1
        expected = 1 / (1 + (len(tok) - 1) * math.exp(-10))   # published max + 10 under sampling
        assert pf[r].max().item() == pytest.approx(expected, rel=1e-5) and pf[r].max() < 1.0
    r = names.index("outside")
    blocked = list(ids.img) + [ids.eoi]
    assert ps[r, blocked].sum() == 0 and pf[r, blocked].sum() > 0.5


# --------------------------------------------------------------------------- 0.0 is not a ban

def test_blocked_token_would_win_against_reference(ids, tok):
    g = torch.Generator().manual_seed(5)
    scores = torch.randn(200, len(tok), generator=g) + torch.randn(200, 1, generator=g) * 3
    blocked = set(ids.img) | {ids.eoi}
    want = []
    for row in scores:
        row = row.clone()
        for t in blocked:
            row[t] = 0.0
        want.append(int(torch.argmax(row)) in blocked)
    got = blocked_token_would_win(scores, ids)
    assert got.dtype == torch.bool and got.tolist() == want
    assert 0 < sum(want) < len(want)                           # both outcomes occur
    mass = blocked_token_mass(scores, ids)
    assert torch.all(mass[got] > 0) and torch.all((mass >= 0) & (mass <= 1))
    # explicit rows: everything negative -> a blocked token wins; one positive text logit -> it does not
    s = torch.full((2, len(tok)), -1.0)
    s[1, 5] = 0.5
    assert blocked_token_would_win(s, ids).tolist() == [True, False]
    assert blocked_token_mass(s, ids)[0].item() == pytest.approx(65 / (65 + (len(tok) - 65) * math.exp(-1)))


# --------------------------------------------------------------------------- recording

def test_record_decisions(tok, ids):
    names, x = state_rows(tok, ids)
    g = torch.Generator().manual_seed(7)
    scores = torch.randn(len(names), len(tok), generator=g)
    p = Proc(tok, record=True)
    p(x, scores)
    p(x, scores)
    assert len(p.decisions) == 2 * len(names)
    assert [d.step for d in p.decisions] == [0] * len(names) + [1] * len(names)
    d = {dec.row: dec for dec in p.decisions if dec.step == 0}
    p_boi = scores.softmax(-1)[:, ids.boi]
    for nm, (state, k, fid) in {"outside": ("outside", None, None), "k37": ("inside", 37, ids.img[37]),
                                "closing": ("closing", 64, ids.eoi)}.items():
        r = names.index(nm)
        assert (d[r].state, d[r].block_index, d[r].forced_id) == (state, k, fid)
        assert d[r].p_boi == pytest.approx(p_boi[r].item(), rel=1e-6)
        if fid is None:
            assert d[r].overridden_score == pytest.approx(scores[r, list(ids.img) + [ids.eoi]].max().item())
        else:
            assert d[r].overridden_score == pytest.approx(scores[r, fid].item())
    assert d[0].as_dict()["row"] == 0
    p.reset()
    assert p.decisions == [] and p.step == 0


# --------------------------------------------------------------------------- budget rule

def test_budget_rule(tok, ids):
    names, x = state_rows(tok, ids)
    L = x.shape[1]
    scores = torch.randn(len(names), len(tok))
    outside = [names.index(n) for n in ("outside", "after_eoi")]
    # strict: 65 left (< 66) -> <img> banned in outside rows only; 66 left -> allowed
    out = Proc(tok, mode="strict", max_length=L + N + 1)(x, scores)
    assert torch.all(out[outside, ids.boi] == float("-inf"))
    out = Proc(tok, mode="strict", max_length=L + N + 2)(x, scores)
    assert torch.equal(out[outside, ids.boi], scores[outside, ids.boi])
    # faithful: scores as without a budget; one warning naming the tokens left, but only when
    # <img> would actually be chosen in an outside row (otherwise the short budget is harmless)
    boosted = scores.clone()
    boosted[outside[0], ids.boi] = 100.0
    plain = Proc(tok)(x, boosted)
    with pytest.warns(UserWarning, match="only 65 token") as rec:
        out = Proc(tok, max_length=L + N + 1)(x, boosted)
    assert len(rec) == 1 and torch.equal(out, plain)
    lowered = scores.clone()
    lowered[:, ids.boi] = -100.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Proc(tok, max_length=L + N + 2)(x, boosted)              # enough room
        Proc(tok, max_length=L + N + 1)(x, lowered)              # short, but <img> is not chosen
    # an open block that cannot reach </img> is reported in either mode
    with pytest.warns(UserWarning, match="cut off before </img>"):
        Proc(tok, mode="strict", max_length=L + 3)(x, scores)


# --------------------------------------------------------------------------- with transformers.generate

@pytest.fixture(scope="module")
def tiny_llama(tok):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                      pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return LlamaForCausalLM(cfg).eval()


class BoostBoi(LogitsProcessor):
    """Makes <img> the favourite outside a block (runs before the SEED-X processor)."""

    def __init__(self, boi):
        self.boi = boi

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.boi] += 100.0
        return scores


def _gen(model, x, procs, **kw):
    with torch.no_grad():
        return model.generate(x, attention_mask=torch.ones_like(x), logits_processor=LogitsProcessorList(procs),
                              max_new_tokens=70, pad_token_id=0, **kw)


@pytest.mark.parametrize("mode,sample", [("faithful", False), ("strict", False), ("strict", True)])
def test_generate_writes_the_whole_block(tok, ids, tiny_llama, mode, sample):
    x = torch.tensor([tok.encode("a red circle<img>", add_special_tokens=False)])
    kw = dict(do_sample=True, temperature=1.5, top_k=0) if sample else dict(do_sample=False)
    torch.manual_seed(1)
    out = _gen(tiny_llama, x, [Proc(tok, mode=mode)], **kw)
    new = out[0, x.shape[1]:].tolist()
    assert new[:N + 1] == list(ids.img) + [ids.eoi]


def test_generate_batched_left_padded_blocks_are_whole(tok, ids, tiny_llama):
    # rows start in different states; every block opened in the output is complete (or runs off the end)
    rows = [tok.encode(s, add_special_tokens=False) for s in ("a red circle<img><img_00000><img_00001>", "red .")]
    x = left_pad(rows)
    mask = (x != 0).long()
    p = Proc(tok, mode="strict", record=True)
    with torch.no_grad():
        out = tiny_llama.generate(x, attention_mask=mask, logits_processor=LogitsProcessorList([BoostBoi(ids.boi), p]),
                                  max_new_tokens=70, do_sample=False, pad_token_id=0)
    first = out[0, x.shape[1]:].tolist()
    assert first[:N - 1] == list(ids.img[2:]) + [ids.eoi]
    second = out[1, x.shape[1]:].tolist()
    assert second[:N + 2] == [ids.boi] + list(ids.img) + [ids.eoi]      # boosted <img>, then forced
    assert {d.step for d in p.decisions} == set(range(70)) and len(p.decisions) == 140


def test_generate_budget_rule(tok, ids, tiny_llama):
    x = torch.tensor([tok.encode("a red circle", add_special_tokens=False)])
    L = x.shape[1]
    block = [ids.boi] + list(ids.img) + [ids.eoi]
    # strict: one whole block (66 tokens), then <img> is banned for the last 4 steps
    out = _gen(tiny_llama, x, [BoostBoi(ids.boi), Proc(tok, mode="strict", max_length=L + 70)], do_sample=False)
    new = out[0, L:].tolist()
    assert new[:N + 2] == block and ids.boi not in new[N + 2:]
    # faithful: <img> starts again with 4 tokens left; the cut-off is announced, then reported each step
    with pytest.warns(UserWarning) as rec:
        out = _gen(tiny_llama, x, [BoostBoi(ids.boi), Proc(tok, max_length=L + 70)], do_sample=False)
    msgs = [str(w.message) for w in rec]
    assert "only 4 token(s) left" in msgs[0] and all("cut off before </img>" in m for m in msgs[1:])
    assert len(msgs) == 4                                     # one per call from the 4th-last step on
    new = out[0, L:].tolist()
    assert new[:N + 2] == block and new[N + 2:] == [ids.boi, ids.img[0], ids.img[1], ids.img[2]]
