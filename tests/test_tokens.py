import pytest
from transformers import PreTrainedTokenizerFast

from seedx_lab import tokens as T


@pytest.fixture(scope="module")
def tok():
    return T.build_tokenizer(["a", "red", "blue", "circle", "square", ".", "describe", "the", "image"])


def test_special_tokens_are_single_ids(tok):
    vocab = tok.get_vocab()
    for s in T.special_tokens():
        ids = tok.encode(s, add_special_tokens=False)
        assert ids == [vocab[s]], s
    # glued to words without spaces, they still come out whole
    ids = tok.encode("red circle<img><img_00000><img_00001></img>", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids) == ["red", "circle", "<img>", "<img_00000>", "<img_00001>", "</img>"]


def test_add_special_tokens_is_idempotent_and_works_on_other_tokenizers(tok):
    assert T.add_special_tokens(tok) == 0
    n = len(tok)
    assert T.add_special_tokens(tok) == 0 and len(tok) == n
    # a tokenizer built without them
    from tokenizers import Tokenizer, models, pre_tokenizers
    core = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    other = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>")
    with pytest.raises(ValueError, match="lacks 104 SEED-X special token"):
        T.ImageTokenIds.from_tokenizer(other, num_img_tokens=100)
    assert T.add_special_tokens(other) == 104
    assert T.add_special_tokens(other) == 0
    ids = T.ImageTokenIds.from_tokenizer(other)
    assert other.encode("hello<img_00063>", add_special_tokens=False) == [1, ids.img[63]]


def test_tokenizer_survives_save_and_load(tok, tmp_path):
    T.save_tokenizer(tok, tmp_path / "tok")
    back = T.load_tokenizer(tmp_path / "tok")
    text = "a red circle.<img>" + "".join(T.IMG_TOKEN.format(i) for i in range(64)) + "</img>"
    assert back.encode(text) == tok.encode(text)
    assert T.ImageTokenIds.from_tokenizer(back) == T.ImageTokenIds.from_tokenizer(tok)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        T.load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ValueError, match="could not read the tokenizer"):
        T.load_tokenizer(tmp_path)


def test_unknown_words_and_case(tok):
    assert tok.convert_ids_to_tokens(tok.encode("A RED zebra", add_special_tokens=False)) == ["a", "red", "<unk>"]


def test_prompt_builders_exact_framing():
    assert T.generation_prompt("a red circle") == "a red circle<img>"
    body = "".join(f"<img_{i:05d}>" for i in range(64))
    assert T.comprehension_prompt(1) == "<img>" + body + "</img>"
    assert T.comprehension_prompt(3) == ("<patch>" + body + "</patch>") * 2 + "<img>" + body + "</img>"
    p5 = T.comprehension_prompt(5, num_tokens=4)
    small = "<img_00000><img_00001><img_00002><img_00003>"
    assert p5 == ("<patch>" + small + "</patch>") * 4 + "<img>" + small + "</img>"
    assert T.instruction_prompt("describe the image.", T.comprehension_prompt(1, 2)) == \
        "[INST] <img><img_00000><img_00001></img>describe the image. [/INST]\n"
    with pytest.raises(ValueError, match="n_tiles=0"):
        T.comprehension_prompt(0)


@pytest.fixture(scope="module")
def ids(tok):
    return T.ImageTokenIds.from_tokenizer(tok, num_img_tokens=4)


def test_find_blocks_on_hand_made_sequences(ids):
    w = 5  # some word id
    img = list(ids.img)
    seq = [w, ids.bop, *img, ids.eop, ids.bop, *img, ids.eop, ids.boi, *img, ids.eoi, w, w]
    blocks = T.find_image_blocks(seq, ids, expected_tokens=4)
    assert [(b.start, b.end, b.kind, b.complete, b.n_tokens) for b in blocks] == [
        (1, 7, "patch", True, 4), (7, 13, "patch", True, 4), (13, 19, "img", True, 4)]
    assert list(blocks[2].token_positions) == [14, 15, 16, 17]
    assert all(seq[p] in img for b in blocks for p in b.token_positions)


def test_find_blocks_truncated_and_malformed(ids):
    w = 5
    img = list(ids.img)
    # generation cut off after two image tokens
    b, = T.find_image_blocks([w, ids.boi, img[0], img[1]], ids)
    assert (b.start, b.end, b.complete, b.n_tokens) == (1, 4, False, 2)
    # a prompt that ends in <img>: an open block with no tokens yet
    b, = T.find_image_blocks([w, w, ids.boi], ids)
    assert (b.start, b.end, b.complete, b.n_tokens) == (2, 3, False, 0)
    # wrong closer, and a block with too few tokens for the expected count
    b1, b2 = T.find_image_blocks([ids.bop, *img, ids.eoi, ids.boi, img[0], ids.eoi], ids, expected_tokens=4)
    assert not b1.complete and b1.end == 5
    assert b2.start == 6 and not b2.complete and b2.n_tokens == 1
    # stray image tokens and closers outside blocks are not blocks
    assert T.find_image_blocks([img[0], ids.eoi, w, ids.eop], ids) == []
    with pytest.raises(ValueError, match="not a batch"):
        T.find_image_blocks([[1, 2]], ids)


def test_find_blocks_accepts_tensors(ids):
    import torch
    seq = torch.tensor([ids.boi, *ids.img, ids.eoi])
    b, = T.find_image_blocks(seq, ids)
    assert b.complete and b.n_tokens == 4


def test_build_tokenizer_rejects_bad_words():
    with pytest.raises(ValueError, match="single words"):
        T.build_tokenizer(["two words"])


def test_image_token_index_reads_exactly_the_image_tokens_of_a_vocabulary():
    tok = T.build_tokenizer(["a", "img", "00012", "_"])
    found = {w: T.image_token_index(w) for w in tok.get_vocab() if T.image_token_index(w) is not None}
    assert len(found) >= T.NUM_IMG_TOKENS                         # SEED-X's vocabulary has spare image tokens
    assert found == {T.IMG_TOKEN.format(i): i for i in range(len(found))}
    assert len([w for w in tok.get_vocab() if w.startswith("<img_")]) == len(found)
    for text in ("<img>", "</img>", "<img_>", "<img_0001x>", "<img_00012>a", " <img_00012>", "<patch>"):
        assert T.image_token_index(text) is None, text
    assert T.image_token_index("<img_12>") == 12                  # typed text may drop the zero padding
