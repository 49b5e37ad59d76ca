"""The procedural shape world: reproducibility, splits, text, stories and input checks."""
import itertools

import numpy as np
import pytest

from seedx_lab import world as W

N = 250  # seeds per task in the sweeps below


def _all_samples(split, n=N):
    for seed in range(n):
        yield "caption", W.caption_image_sample(seed, split)
        yield "comprehension", W.comprehension_sample(seed, split)
        yield "story", W.story_sample(seed, split)
        yield "text", W.text_only_sample(seed, split)


def _scenes(sample):
    if hasattr(sample, "segments"):
        return sample.scenes
    return [sample.scene]


def _texts(sample):
    if hasattr(sample, "segments"):
        return sample.texts
    if hasattr(sample, "caption"):
        return [sample.caption]
    return [sample.question, sample.answer]


def _primary(sample):
    return _scenes(sample)[0].objects[0]


# ------------------------------------------------------------------ reproducibility

def test_same_seed_same_sample():
    for seed in (0, 7, 12345):
        a, b = W.caption_image_sample(seed, "train"), W.caption_image_sample(seed, "train")
        assert a.caption == b.caption and a.scene == b.scene
        assert a.image.tobytes() == b.image.tobytes()
        c, d = W.comprehension_sample(seed, "test"), W.comprehension_sample(seed, "test")
        assert (c.question, c.answer) == (d.question, d.answer) and c.image.tobytes() == d.image.tobytes()
        assert W.story_sample(seed).segments == W.story_sample(seed).segments
        assert W.text_only_sample(seed).segments == W.text_only_sample(seed).segments
        assert W.sample_scene(seed, "validation", 128, 64) == W.sample_scene(seed, "validation", 128, 64)


def test_different_seeds_differ():
    images = {W.caption_image_sample(s).image.tobytes() for s in range(40)}
    captions = {W.caption_image_sample(s).caption for s in range(40)}
    assert len(images) == 40
    assert len(captions) >= 35
    # splits draw differently from the same seed
    assert W.caption_image_sample(3, "train").caption != W.caption_image_sample(3, "test").caption


def test_render_is_rgb_with_requested_size_and_objects_in_colour():
    scene = W.Scene(64, 64, W.BACKGROUNDS["white"], [W.Obj("square", "blue", "big", 0.5, 0.5)])
    img = W.render(scene)
    assert img.mode == "RGB" and img.size == (64, 64)
    arr = np.asarray(img)
    assert tuple(arr[32, 32]) == W.COLOURS["blue"]
    assert tuple(arr[2, 2]) == W.BACKGROUNDS["white"]
    wide = W.Scene(128, 64, W.BACKGROUNDS["grey"], scene.objects)
    assert W.render(wide, size=32).size == (64, 32)          # int = shorter side, aspect kept
    assert W.render(wide, size=(96, 48)).size == (96, 48)


# ------------------------------------------------------------------ layout

def test_objects_fit_inside_the_image_and_never_touch():
    for seed in range(N):
        for scene in (W.caption_image_sample(seed).scene, W.comprehension_sample(seed).scene, *W.story_sample(seed).scenes):
            w, h = scene.width, scene.height
            boxes = [o.bbox(w, h) for o in scene.objects]
            for x0, y0, x1, y1 in boxes:
                assert x0 >= 0 and y0 >= 0 and x1 <= w and y1 <= h
            for (a0, b0, a1, b1), (c0, d0, c1, d1) in itertools.combinations(boxes, 2):
                assert a1 < c0 or c1 < a0 or b1 < d0 or d1 < b0, f"seed {seed}: objects overlap"
            positions = [o.position for o in scene.objects]
            assert len(set(positions)) == len(positions)


def test_small_and_big_objects_are_drawable_sizes():
    assert W.SIZES["small"] * 64 >= 8 and W.SIZES["big"] * 64 >= 15


def test_comprehension_uses_every_aspect():
    seen = set()
    for seed in range(100):
        c = W.comprehension_sample(seed)
        assert c.image.size == (c.scene.width, c.scene.height)
        assert (c.scene.width, c.scene.height) in W.ASPECTS
        seen.add(c.image.size)
    assert seen == set(W.ASPECTS)


def test_caption_images_are_square_and_mostly_one_object():
    kinds = [W.caption_image_sample(s).kind for s in range(300)]
    assert kinds.count("single") > 150 and kinds.count("relation") > 30 and kinds.count("count") > 10
    assert all(W.caption_image_sample(s).image.size == (64, 64) for s in range(20))


# ------------------------------------------------------------------ splits

def test_held_out_triples_are_about_ten_percent_and_keep_every_pair_in_train():
    n_all = len(W.SHAPES) * len(W.COLOURS) * len(W.POSITIONS)
    assert abs(len(W.TEST_TRIPLES) - 0.1 * n_all) <= 1
    assert not W.TEST_TRIPLES & W.VALIDATION_TRIPLES
    for s, c, p in W.TEST_TRIPLES | W.VALIDATION_TRIPLES:
        assert any(t[:2] == (s, c) for t in W.TRAIN_TRIPLES)
        assert any((t[0], t[2]) == (s, p) for t in W.TRAIN_TRIPLES)
        assert any(t[1:] == (c, p) for t in W.TRAIN_TRIPLES)
        assert W.split_of_triple(s, c, p) in ("test", "validation")
    assert all(W.split_of_triple(*t) == "train" for t in W.TRAIN_TRIPLES)


def test_train_never_shows_a_held_out_triple():
    for task, sample in _all_samples("train"):
        for scene in _scenes(sample):
            for o in scene.objects:
                assert W.split_of_triple(*o.triple) == "train", (task, sample.seed, o)


def test_test_samples_start_with_a_held_out_triple():
    for task, sample in _all_samples("test", 150):
        if task == "text":
            continue
        assert _primary(sample).triple in W.TEST_TRIPLES, (task, sample.seed)
        for scene in _scenes(sample):
            assert all(o.triple not in W.VALIDATION_TRIPLES for o in scene.objects)
    for task, sample in _all_samples("validation", 60):
        if task != "text":
            assert _primary(sample).triple in W.VALIDATION_TRIPLES


def test_test_split_covers_every_held_out_triple():
    seen = {W.caption_image_sample(s, "test").scene.objects[0].triple for s in range(200)}
    assert seen == set(W.TEST_TRIPLES)


# ------------------------------------------------------------------ text

def test_tokenize_words_splits_punctuation():
    assert W.tokenize_words("First , we draw a Red star . here it is :") == \
        ["first", ",", "we", "draw", "a", "red", "star", ".", "here", "it", "is", ":"]
    assert W.tokenize_words("a red star.") == ["a", "red", "star", "."]


def test_vocabulary_covers_everything_generated():
    vocab = set(W.vocabulary())
    assert {".", ",", ":"} <= vocab and set(W.SHAPES) <= vocab and set(W.COLOURS) <= vocab
    used = set()
    for split in W.SPLITS:
        for _, sample in _all_samples(split, 120):
            for text in _texts(sample):
                toks = W.tokenize_words(text)
                assert all(t == t.lower() and (t.isalpha() or t in ".,:") for t in toks), text
                used.update(toks)
    assert used <= vocab, used - vocab
    assert len(vocab - used) <= 3   # the vocabulary is not padded with words nobody says


def test_describe_then_parse_recovers_the_scene():
    for seed in range(N):
        scene = W.comprehension_sample(seed).scene
        parsed = W.parse_description(W.describe_scene(scene))
        want = sorted((o.shape, o.colour, o.size, o.position) for o in scene.objects)
        got = sorted((d["shape"], d["colour"], d["size"], d["position"]) for d in parsed)
        assert got == want, W.describe_scene(scene)


def test_describe_lists_objects_in_fixed_order():
    scene = W.Scene(64, 64, objects=[W.Obj("star", "red", "small", 0.83, 0.5), W.Obj("circle", "blue", "small", 0.5, 0.17)])
    assert W.describe_scene(scene) == "a small blue circle at the top , a small red star on the right ."
    assert W.describe_scene(W.Scene()) == W.EMPTY_DESCRIPTION


def test_parse_captions_of_every_kind():
    for seed in range(N):
        s = W.caption_image_sample(seed)
        parsed = W.parse_description(s.caption)
        objs = s.scene.objects
        p = objs[0]
        assert (parsed[0]["shape"], parsed[0]["colour"], parsed[0]["size"]) == (p.shape, p.colour, p.size), s.caption
        if s.kind == "count":
            assert len(parsed) == len(objs)
        else:
            assert [d["position"] for d in parsed] == [o.position for o in objs], s.caption
    assert W.parse_description("a red star to the left of a big blue circle .") == [
        dict(shape="star", colour="red", size=None, position="left"),
        dict(shape="circle", colour="blue", size="big", position="right")]
    assert W.parse_description("nothing to see") == []


# ------------------------------------------------------------------ stories

def test_story_images_follow_trigger_text_only():
    n_images = []
    for seed in range(N):
        story = W.story_sample(seed)
        segs = story.segments
        assert isinstance(segs[0], str)
        n_images.append(story.n_images)
        for i, seg in enumerate(segs):
            if isinstance(seg, W.Scene):
                assert isinstance(segs[i - 1], str) and W.ends_with_trigger(segs[i - 1])
            else:
                follows_image = i + 1 < len(segs) and isinstance(segs[i + 1], W.Scene)
                assert W.ends_with_trigger(seg) == follows_image
                body = seg[: -len(next(p for p in W.TRIGGER_PHRASES if seg.endswith(p)))] if follows_image else seg
                assert not W.contains_trigger(body) and ":" not in body
    assert set(n_images) == {1, 2, 3}


def test_story_text_predicts_its_image():
    for seed in range(N):
        segs = W.story_sample(seed).segments
        prev = []
        for i, seg in enumerate(segs):
            if not isinstance(seg, W.Scene):
                continue
            step = segs[i - 1].split(" . ")[-2] if " . " in segs[i - 1] else segs[i - 1]
            named = W.parse_description(step)[-1]
            new = seg.objects[-1]
            assert (named["shape"], named["colour"], named["size"], named["position"]) == \
                (new.shape, new.colour, new.size, new.position), segs[i - 1]
            if "add" in W.tokenize_words(step):          # cumulative step keeps earlier objects
                assert seg.objects[:-1] == prev
            else:
                assert len(seg.objects) == 1
            prev = seg.objects


def test_text_only_samples_never_trigger():
    for seed in range(N):
        t = W.text_only_sample(seed)
        assert t.n_images == 0 and t.kind == "text_only"
        for text in t.texts:
            assert not W.contains_trigger(text) and ":" not in text and not W.ends_with_trigger(text)
    # they share the story vocabulary, so the trigger is what tells them apart
    assert any("let us draw" in W.text_only_sample(s).texts[0] for s in range(100))


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("make, word", [
    (lambda: W.Obj("circle", "pink", "big", 0.5, 0.5), "colour"),
    (lambda: W.Obj("hexagon", "red", "big", 0.5, 0.5), "shape"),
    (lambda: W.Obj("circle", "red", "huge", 0.5, 0.5), "size"),
    (lambda: W.Obj("circle", "red", "big", 1.5, 0.5), "cx"),
    (lambda: W.Scene(0, 64), "width"),
    (lambda: W.Scene(64, 64, background=(300, 0, 0)), "background"),
    (lambda: W.sample_scene(1, "dev"), "split"),
    (lambda: W.sample_scene(1, "train", width=0), "width"),
    (lambda: W.sample_scene(1, "train", n_objects=0), "n_objects"),
    (lambda: W.caption_image_sample(-1), "seed"),
    (lambda: W.story_sample(2, "validate"), "split"),
    (lambda: W.split_of_triple("circle", "red", "middle"), "position"),
    (lambda: W.render(W.Scene(), size=0), "width"),
    (lambda: W.tokenize_words(None), "text"),
])
def test_bad_input_raises_value_error_naming_the_problem(make, word):
    with pytest.raises(ValueError, match=word):
        make()
