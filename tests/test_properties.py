"""Property-based tests (hypothesis) of the any-res tiler and the image-block finder."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from seedx_lab import anyres as A
from seedx_lab import tokens as T

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------- tiling

# sizes from slivers to large, with extreme aspect ratios well represented
side = st.one_of(st.integers(1, 8), st.integers(1, 600), st.integers(600, 20000))
bases = st.sampled_from([8, 14, 16, 64, 448])
pinpoint_sets = st.one_of(st.just(A.PINPOINTS),
                          st.lists(st.sampled_from(A.PINPOINTS + ("3x2", "2x3", "1x6")), min_size=1, max_size=6,
                                   unique=True).map(tuple))


@SETTINGS
@given(w=side, h=side, base=bases, pinpoints=pinpoint_sets)
def test_the_chosen_resolution_is_a_candidate_and_follows_the_smaller_area_rule(w, h, base, pinpoints):
    d = A.choose_resolution((w, h), base, pinpoints)
    cands = A.candidate_resolutions(base, pinpoints)
    assert d.candidates == cands
    assert d.chosen in cands and d.llava_choice in cands and d.aspect_choice in cands
    a, b = d.llava_choice, d.aspect_choice
    assert d.chosen == (b if a[0] * a[1] > b[0] * b[1] else a)
    assert d.grid == (d.chosen[0] // base, d.chosen[1] // base)
    assert f"{d.grid[0]}x{d.grid[1]}" in pinpoints
    assert d.n_tiles == d.grid[0] * d.grid[1] + 1 and len(d.table) == len(cands)
    # the aspect choice really is closest in aspect ratio (ties allowed)
    ratio = lambda c: max(c[1] / c[0], h / w) / min(c[1] / c[0], h / w)   # noqa: E731
    assert ratio(b) <= min(ratio(c) for c in cands) * (1 + 1e-12)


@SETTINGS
@given(w=st.one_of(st.integers(1, 4), st.integers(1, 300), st.integers(300, 3000)),
       h=st.one_of(st.integers(1, 4), st.integers(1, 300), st.integers(300, 3000)),
       base=st.sampled_from([4, 8, 14]), keep_ratio=st.booleans())
def test_tiles_have_consistent_shapes_and_positions(w, h, base, keep_ratio):
    t = A.tile_image(Image.new("RGB", (w, h), (30, 60, 90)), base=base, keep_ratio=keep_ratio)
    C, R = t.decision.grid
    n = C * R + 1
    assert len(t) == n and t.pixels.shape == (n, 3, base, base) and len(t.images) == n
    assert all(im.size == (base, base) for im in t.images)
    assert t.positions.shape == (n, 2) and torch.isfinite(t.pixels).all()
    assert ((t.positions > 0) & (t.positions < 1)).all()
    for k in range(C * R):                                           # row-major tile centres
        row, col = divmod(k, C)
        assert math.isclose(float(t.positions[k, 0]), (col + 0.5) / C, rel_tol=1e-6)
        assert math.isclose(float(t.positions[k, 1]), (row + 0.5) / R, rel_tol=1e-6)
    assert t.positions[-1].tolist() == [0.5, 0.5]
    assert torch.equal(A.tile_positions((C, R)), t.positions)


@SETTINGS
@given(c=st.integers(1, 6), r=st.integers(1, 6))
def test_tile_positions_cover_the_grid_once(c, r):
    pos = A.tile_positions((c, r))
    cells = {(int(x * c), int(y * r)) for x, y in pos[:-1].tolist()}
    assert cells == {(i, j) for i in range(c) for j in range(r)}


# --------------------------------------------------------------------------- the block finder

IDS = T.ImageTokenIds(boi=1000, eoi=1001, bop=1002, eop=1003, img=tuple(range(2000, 2064)))
OPENERS = {IDS.boi: IDS.eoi, IDS.bop: IDS.eop}
TEXT = st.integers(0, 999)
ANY_TOKEN = st.one_of(TEXT, st.sampled_from([IDS.boi, IDS.eoi, IDS.bop, IDS.eop]), st.sampled_from(IDS.img))


def check_blocks(ids, blocks, expected_tokens=None):
    img = set(IDS.img)
    prev_end = 0
    for b in blocks:
        assert prev_end <= b.start < b.end <= len(ids)                 # in order, no overlap
        prev_end = b.end
        opener = ids[b.start]
        assert opener in OPENERS and b.kind == ("img" if opener == IDS.boi else "patch")
        body = ids[b.token_start: b.token_start + b.n_tokens]
        assert len(body) == b.n_tokens and all(t in img for t in body)
        after = b.token_start + b.n_tokens
        closed = after < len(ids) and ids[after] == OPENERS[opener]
        assert after >= len(ids) or ids[after] not in img              # the run of image tokens is maximal
        assert b.end == (after + 1 if closed else after)
        assert b.complete == (closed and (expected_tokens is None or b.n_tokens == expected_tokens))
        assert list(b.token_positions) == list(range(b.start + 1, b.start + 1 + b.n_tokens))
    # every opener outside a block starts one
    covered = set()
    for b in blocks:
        covered.update(range(b.start, b.end))
    starts = {b.start for b in blocks}
    for i, t in enumerate(ids):
        if t in OPENERS and i not in covered:
            raise AssertionError(f"opener at {i} is in no block")
        if t in OPENERS and i in covered and i not in starts:
            raise AssertionError(f"opener at {i} swallowed by another block")


@SETTINGS
@given(ids=st.lists(ANY_TOKEN, max_size=80), expected=st.one_of(st.none(), st.integers(0, 4)))
def test_blocks_of_random_sequences_are_well_formed(ids, expected):
    blocks = T.find_image_blocks(ids, IDS, expected_tokens=expected)
    check_blocks(ids, blocks, expected)
    assert T.find_image_blocks(torch.tensor(ids, dtype=torch.long), IDS, expected) == blocks


@st.composite
def well_formed(draw):
    """Text runs with complete blocks between them; returns (ids, the blocks inserted)."""
    ids, blocks = [], []
    for _ in range(draw(st.integers(0, 5))):
        ids += draw(st.lists(st.one_of(TEXT, st.sampled_from([IDS.eoi, IDS.eop])), max_size=6))  # stray closers too
        kind = draw(st.sampled_from(["img", "patch"]))
        n = draw(st.integers(0, 8))
        body = draw(st.lists(st.sampled_from(IDS.img), min_size=n, max_size=n))
        opener, closer = (IDS.boi, IDS.eoi) if kind == "img" else (IDS.bop, IDS.eop)
        start = len(ids)
        ids += [opener, *body, closer]
        blocks.append(T.ImageBlock(start, len(ids), kind, True, n))
    ids += draw(st.lists(TEXT, max_size=6))
    return ids, blocks


@SETTINGS
@given(case=well_formed())
def test_a_well_formed_sequence_gives_back_exactly_its_blocks(case):
    ids, inserted = case
    assert T.find_image_blocks(ids, IDS) == inserted
    check_blocks(ids, inserted)


@SETTINGS
@given(case=well_formed(), cut=st.integers(0, 200))
def test_a_cut_sequence_keeps_its_whole_blocks_and_marks_the_cut_one(case, cut):
    ids, inserted = case
    cut = min(cut, len(ids))
    found = T.find_image_blocks(ids[:cut], IDS)
    whole = [b for b in inserted if b.end <= cut]
    assert found[: len(whole)] == whole
    rest = found[len(whole):]
    assert len(rest) <= 1 and all(not b.complete and b.end == cut for b in rest)


SPECIALS = ["<img>", "</img>", "<patch>", "</patch>", "<img_00000>", "<img_00063>", "<img_00150>", "<img_7>"]


@st.composite
def text_with_specials(draw):
    """Random text that cannot form a special token, with special tokens inserted; returns (text, inserted)."""
    plain = st.text(alphabet=st.sampled_from(list("ab img_0123 patch/>")), max_size=12)   # no '<'
    parts, inserted = [draw(plain)], []
    for _ in range(draw(st.integers(0, 5))):
        tok = draw(st.sampled_from(SPECIALS))
        inserted.append(tok)
        parts += [tok, draw(plain)]
    return "".join(parts), inserted


@SETTINGS
@given(case=text_with_specials())
def test_special_token_text_finds_exactly_what_was_inserted(case):
    text, inserted = case
    expected = []
    for tok in inserted:
        if tok not in expected:
            expected.append(tok)
    assert T.special_token_text(text) == expected


@pytest.mark.parametrize("n", [1, 64])
def test_the_prompt_builders_round_trip_through_the_finder(n):
    tok = T.build_tokenizer("a red circle".split())
    ids = T.ImageTokenIds.from_tokenizer(tok, n)
    text = "a " + T.comprehension_prompt(3, n) + " red " + T.generation_prompt("circle") + T.image_block(n)[5:]
    blocks = T.find_image_blocks(tok.encode(text, add_special_tokens=False), ids, expected_tokens=n)
    assert [(b.kind, b.complete, b.n_tokens) for b in blocks] == [("patch", True, n)] * 2 + [("img", True, n)] * 2
