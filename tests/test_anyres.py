from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from seedx_lab import anyres as A
from seedx_lab import images as I

GRIDS = [(1, 1), (1, 2), (1, 3), (2, 1), (3, 1), (1, 4), (4, 1), (2, 2)]


def reference_choice(w0, h0, base):
    """Independent statement of the published rule, with exact fractions and sorted()."""
    cands = [(c * base, r * base) for c, r in GRIDS]

    def llava_key(i):
        w, h = cands[i]
        s = min(Fraction(w, w0), Fraction(h, h0))
        eff = min(int(w0 * s) * int(h0 * s), w0 * h0)
        return (-eff, w * h - eff, i)            # max effective, min waste, first wins

    def aspect_key(i):
        w, h = cands[i]
        ar, ar0 = Fraction(h, w), Fraction(h0, w0)
        return (max(ar, ar0) / min(ar, ar0), Fraction(max(w * h, w0 * h0), min(w * h, w0 * h0)), i)

    a = cands[sorted(range(len(cands)), key=llava_key)[0]]
    b = cands[sorted(range(len(cands)), key=aspect_key)[0]]
    return a, b, (b if a[0] * a[1] > b[0] * b[1] else a)


def test_hand_checked_cases():
    # 1000x300 (wide): both rules want 3 columns x 1 row
    d = A.choose_resolution((1000, 300), base=448)
    assert d.chosen == (1344, 448) and d.grid == (3, 1) and d.n_tiles == 4
    # a square photo: 2x2 has the largest effective resolution, the aspect rule ties 1x1 and 2x2
    # on ratio and prefers the closer area; the smaller area wins
    d = A.choose_resolution((500, 500), base=448)
    assert d.llava_choice == (896, 896) and d.aspect_choice == (448, 448) and d.chosen == (448, 448)
    d = A.choose_resolution((900, 900), base=448)
    assert d.chosen == (896, 896)


@pytest.mark.parametrize("base", [448, 64])
def test_choice_matches_independent_rule_on_many_sizes(base):
    rng = np.random.default_rng(0)
    sizes = [(int(w), int(h)) for w, h in rng.integers(1, 3000, size=(400, 2))]
    sizes += [(1, 1), (1, 10000), (10000, 1), (base, base), (2 * base, base), (base, 4 * base)]
    disagreements = 0
    for w, h in sizes:
        a, b, chosen = reference_choice(w, h, base)
        d = A.choose_resolution((w, h), base=base)
        assert (d.llava_choice, d.aspect_choice, d.chosen) == (a, b, chosen), (w, h)
        disagreements += a != b
    assert disagreements > 20  # the two rules really do disagree on many sizes


def test_tiling_shapes_and_positions_wide_tall_square():
    for size, grid in [((1000, 300), (3, 1)), ((300, 1000), (1, 3)), ((900, 900), (2, 2))]:
        t = A.tile_image(Image.new("RGB", size, (10, 20, 30)), base=64)
        c, r = grid
        assert t.decision.grid == grid
        assert t.pixels.shape == (c * r + 1, 3, 64, 64)
        assert t.positions.shape == (c * r + 1, 2)
        assert torch.equal(t.positions[-1], torch.tensor([0.5, 0.5]))
        expect = [((col + 0.5) / c, (row + 0.5) / r) for row in range(r) for col in range(c)]
        assert torch.allclose(t.positions[:-1], torch.tensor(expect))


def test_tiles_are_row_major_crops_of_the_stretched_image():
    # a 2x2 image with four coloured quadrants, stretched to 2x2 tiles of 8 px
    a = np.zeros((40, 40, 3), np.uint8)
    a[:20, :20] = (255, 0, 0); a[:20, 20:] = (0, 255, 0); a[20:, :20] = (0, 0, 255); a[20:, 20:] = (255, 255, 0)
    t = A.tile_image(a, base=8, normalize=False)
    assert t.decision.grid == (2, 2)
    means = t.pixels[:4].mean(dim=(2, 3))
    assert torch.allclose(means, torch.tensor([[1., 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]]), atol=0.02)
    # global view is the whole image at base size
    assert torch.allclose(t.pixels[4].mean(dim=(1, 2)), torch.tensor([0.5, 0.5, 0.25]), atol=0.03)


def test_keep_ratio_pads_instead_of_stretching():
    t = A.tile_image(Image.new("RGB", (100, 60), (255, 255, 255)), base=32, keep_ratio=True, normalize=False)
    W, H = t.decision.chosen
    stretched = A.tile_image(Image.new("RGB", (100, 60), (255, 255, 255)), base=32, normalize=False)
    assert stretched.pixels[:-1].min() == 1.0          # stretching leaves no border
    if (W / 100) != (H / 60):
        assert t.pixels[:-1].min() == 0.0                 # padding leaves black borders


def test_normalisation_is_clip():
    t = A.tile_image(Image.new("RGB", (32, 32), (255, 255, 255)), base=32)
    expect = (1 - torch.tensor(I.CLIP_MEAN)) / torch.tensor(I.CLIP_STD)
    assert torch.allclose(t.pixels[0, :, 0, 0], expect)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "CMYK", "I;16", "I", "F", "1", "RGB"])
def test_every_pil_mode_becomes_rgb(mode):
    im = Image.new("RGB", (50, 30), (200, 100, 50)).convert(mode)
    t = A.tile_image(im, base=16)
    assert t.pixels.shape[1:] == (3, 16, 16)
    assert all(c.mode == "RGB" for c in t.images)


def test_i16_scales_to_full_range():
    arr = np.full((4, 4), 65535, dtype=np.uint16)
    im = Image.fromarray(arr)
    assert im.mode == "I;16"
    assert np.asarray(I.to_pil_rgb(im)).min() == 255


def test_transparent_pixels_become_white():
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(I.to_pil_rgb(im))[0, 0].tolist() == [255, 255, 255]


def test_arrays_and_tensors_in_hwc_and_chw():
    hwc = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    a = np.asarray(I.to_pil_rgb(hwc))
    b = np.asarray(I.to_pil_rgb(np.moveaxis(hwc, -1, 0)))
    c = np.asarray(I.to_pil_rgb(torch.from_numpy(hwc).permute(2, 0, 1).float() / 255))
    assert a.shape == (20, 30, 3) and (a == hwc).all() and (b == hwc).all() and (c == hwc).all()


@pytest.mark.parametrize("bad, err, msg", [
    ("nope/missing.png", FileNotFoundError, "not found"),
    (42, ValueError, "expected a path"),
    (np.zeros((0, 5, 3), np.uint8), ValueError, "zero side"),
    (np.zeros((5, 5, 7), np.uint8), ValueError, "channel axis"),
    (np.full((5, 5, 3), 2.0), ValueError, r"\[0, 1\]"),
    (np.zeros((2, 2, 2, 3)), ValueError, "HW, HWC or CHW"),
])
def test_bad_inputs_have_named_errors(bad, err, msg):
    with pytest.raises(err, match=msg):
        A.tile_image(bad)


def test_not_an_image_file(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("hello")
    with pytest.raises(ValueError, match="not a readable image"):
        A.tile_image(p)


def test_grid_parsing_errors():
    with pytest.raises(ValueError, match="CxR"):
        A.parse_grid("3by1")
    with pytest.raises(ValueError, match="at least one column"):
        A.parse_grid("0x2")


def test_device_and_dtype():
    t = A.tile_image(Image.new("RGB", (20, 20)), base=8, dtype=torch.float64, device="cpu")
    assert t.pixels.dtype == torch.float64 and t.positions.dtype == torch.float64
