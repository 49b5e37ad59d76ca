"""Every parameter is checked once, at the public entry points (seedx_lab.validate), and refused with a
TypeError / ValueError / FileNotFoundError naming the parameter, the value and what is allowed — before any
work, never deep inside torch or diffusers. Property tests feed each entry point values of each class
(NaN, inf, negative, huge, wrong type, strings, bools, lone surrogates)."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from safetensors.torch import load_file, save_file

from seedx_lab import validate as V
from seedx_lab.anyres import tile_image
from seedx_lab.cli import main as cli_main
from seedx_lab.lab import widgets as W
from seedx_lab.loading import DATA_DIR, load
from seedx_lab.published import checkpoints as C
from seedx_lab.training import build_model

SETTINGS = settings(max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TINY = DATA_DIR / "seedx-tiny"
IMAGE = Image.new("RGB", (64, 64), (200, 30, 30))

# --------------------------------------------------------------------------- classes of bad values

nan_inf = st.sampled_from([math.nan, math.inf, -math.inf])
wrong_kind = st.one_of(st.text(max_size=5), st.booleans(), st.none(), st.lists(st.integers(), max_size=2),
                       st.binary(max_size=3), st.complex_numbers(allow_nan=False, max_magnitude=5))
lone_surrogate = st.tuples(st.text(max_size=5), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                           st.text(max_size=5)).map("".join)


def refused(call, name: str, exc=(TypeError, ValueError)):
    """``call()`` raises ``exc`` naming ``name``, from seedx_lab's own code (not from deep in a library)."""
    with pytest.raises(exc) as e:
        call()
    assert name in str(e.value), str(e.value)
    assert "seedx_lab" in str(e.traceback[-1].path), e.traceback[-1].path
    return e.value


@pytest.fixture(scope="module")
def model():
    """The random stand-in, with every stage that does work replaced by a failure: a refusal must come first."""
    m = build_model(0).eval()

    def boom(*a, **k):
        raise AssertionError("work started before the input was checked")
    m.lvlm.llm.forward = boom
    m.vit.forward = boom
    m.detok.sample = boom
    return m


@pytest.fixture(scope="module")
def working():
    return build_model(0).eval()


FEATS = torch.zeros(64, 64)

# --------------------------------------------------------------------------- the helpers themselves


@SETTINGS
@given(v=st.one_of(st.integers(), st.floats(allow_nan=True), wrong_kind))
def test_integer_accepts_exactly_the_ints_in_range(v):
    ok = isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1000
    if ok:
        assert V.positive_int("steps", v, high=1000) == v
    else:
        err = refused(lambda: V.positive_int("steps", v, high=1000), "steps")
        assert "an int in [1, 1000]" in str(err) and repr(v)[:20] in str(err)
        assert isinstance(err, TypeError if not isinstance(v, int) or isinstance(v, bool) else ValueError)


@SETTINGS
@given(v=st.one_of(st.integers(min_value=-2 ** 70, max_value=2 ** 70), st.floats(), wrong_kind))
def test_seed_is_a_64_bit_unsigned_int(v):
    if isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2 ** 64:
        assert V.seed("seed", v) == v
        torch.Generator().manual_seed(v)                   # what it is for accepts it
    elif v is None:
        assert V.seed("seed", v) is None
    else:
        refused(lambda: V.seed("seed", v), "seed must be an int in [0, 2**64 - 1]")


@SETTINGS
@given(v=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10), nan_inf, wrong_kind))
def test_number_accepts_finite_reals_in_the_interval(v):
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 1
    if ok:
        assert V.number("top_p", v, 0.0, 1.0, low_open=True) == float(v)
    else:
        err = refused(lambda: V.number("top_p", v, 0.0, 1.0, low_open=True), "top_p must be a finite number in (0, 1]")
        assert str(err).endswith(repr(float(v)) if isinstance(v, (int, float)) and not isinstance(v, bool) else ")")


@SETTINGS
@given(good=st.text(st.characters(blacklist_categories=("Cs",)), min_size=1).filter(str.strip), bad=lone_surrogate)
def test_text_refuses_lone_surrogates_and_keeps_real_text(good, bad):
    assert V.text("prompt", good) == good
    err = refused(lambda: V.text("prompt", bad), "prompt holds a lone surrogate")
    assert "position" in str(err)


# --------------------------------------------------------------------------- SeedX methods

bad_steps = st.one_of(st.integers(max_value=0), st.integers(min_value=1001, max_value=10 ** 30),
                      st.floats(allow_nan=True), wrong_kind.filter(lambda v: v is not None))
bad_guidance = st.one_of(nan_inf, st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False),
                         st.floats(min_value=100.0001, allow_nan=False, allow_infinity=False),
                         wrong_kind.filter(lambda v: v is not None))
bad_seed = st.one_of(st.integers(max_value=-1), st.integers(min_value=2 ** 64), st.floats(),
                     wrong_kind.filter(lambda v: v is not None))


@SETTINGS
@given(steps=bad_steps, guidance=bad_guidance, seed=bad_seed)
def test_drawing_settings_are_refused_before_any_work(model, steps, guidance, seed):
    refused(lambda: model.generate_image("a red circle", num_inference_steps=steps), "num_inference_steps")
    refused(lambda: model.draw(FEATS, num_inference_steps=steps), "num_inference_steps")
    refused(lambda: model.generate_image("a red circle", guidance_scale=guidance), "guidance_scale")
    refused(lambda: model.draw(FEATS, guidance_scale=guidance), "guidance_scale")
    refused(lambda: model.generate_image("a red circle", seed=seed), "seed")
    refused(lambda: model.generate("a red circle", seed=seed), "seed")
    refused(lambda: model.generate("a red circle", num_inference_steps=steps), "num_inference_steps")


def test_steps_are_bounded_by_the_schedulers_training_steps(model):
    T = model.detok.scheduler.config.num_train_timesteps
    err = refused(lambda: model.draw(FEATS, num_inference_steps=T + 1), "num_inference_steps")
    assert f"[1, {T}]" in str(err) and str(T + 1) in str(err)


@SETTINGS
@given(t=st.one_of(nan_inf, st.floats(max_value=0.0, allow_nan=False), st.text(max_size=3), st.booleans()),
       p=st.one_of(nan_inf, st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=1.0001, allow_nan=False),
                   st.text(max_size=3)),
       m=st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=3), st.booleans()))
def test_decoding_settings_are_refused_before_any_work(model, t, p, m):
    refused(lambda: model.generate_image("a red circle", do_sample=True, temperature=t), "temperature")
    refused(lambda: model.generate("a red circle", do_sample=True, top_p=p), "top_p")
    refused(lambda: model.generate("a red circle", max_images=m), "max_images")


@SETTINGS
@given(bad=lone_surrogate)
def test_lone_surrogates_in_any_text_are_refused(model, bad):
    refused(lambda: model.generate_image(bad + "x"), "caption holds a lone surrogate")
    refused(lambda: model.generate(bad + "x"), "prompt holds a lone surrogate")
    refused(lambda: model.describe(IMAGE, question=bad), "question holds a lone surrogate")


def test_max_images_zero_means_text_only(model):
    refused(lambda: model.generate("a red circle <img>", max_images=0), "max_images=0")
    refused(lambda: model.generate("a red circle", processor_mode="lenient"), "processor_mode")


def test_guidance_up_to_one_is_off_and_extreme_seeds_work(working):
    g = torch.Generator().manual_seed(0)
    f = torch.randn(64, 64, generator=g)
    a, b, c = (working.draw(f, 1, s, seed=2 ** 64 - 1) for s in (0.0, 1.0, 3.0))
    assert a.tobytes() == b.tobytes()          # <= 1: the conditional prediction alone
    assert c.tobytes() != b.tobytes()          # > 1: guided


# --------------------------------------------------------------------------- images and tiles

@SETTINGS
@given(base=st.one_of(st.integers(max_value=0), st.integers(min_value=V.MAX_TILE_BASE + 1), st.floats(), wrong_kind))
def test_tile_bases_are_bounded_before_allocating(base):
    refused(lambda: tile_image(IMAGE, base=base), "base")


def test_a_tiling_canvas_too_large_is_refused_before_allocating(monkeypatch):
    resize = Image.Image.resize
    monkeypatch.setattr(V, "MAX_TILE_PIXELS", 64 * 64 + 1)                 # one 64-pixel tile fits, two do not
    monkeypatch.setattr(Image.Image, "resize", lambda *a, **k: pytest.fail("resized before the check"))
    refused(lambda: tile_image(Image.new("RGB", (128, 64)), base=64), "a 128x64 tiling canvas (8,192 pixels) is over")
    monkeypatch.setattr(Image.Image, "resize", resize)
    assert len(tile_image(IMAGE, base=64)) == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_is_refused_unread(model, tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    refused(lambda: tile_image(fifo), "is a FIFO, not a regular file")       # would block forever if opened
    refused(lambda: model.describe(fifo), "is a FIFO")
    refused(lambda: V.regular_file("image", tmp_path / "none.png"), "not found", FileNotFoundError)


# --------------------------------------------------------------------------- load and config.json

@pytest.fixture
def ckpt(tmp_path):
    return shutil.copytree(TINY, tmp_path / "ckpt")


def _edit_config(d, where, key, value):
    cfg = json.loads((d / "config.json").read_text())
    (cfg[where] if where else cfg)[key] = value
    (d / "config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("where, key, value, msg", [
    ("llm", "hidden_size", "64", r"llm\.hidden_size must be an int, got '64' \(str\)"),
    ("vit", "layers", 4.0, r"vit\.layers must be an int, got 4\.0 \(float\)"),
    ("detok", "normalize", 0, r"detok\.normalize must be True or False, got 0"),
    ("llm", "rms_norm_eps", math.nan, r"llm\.rms_norm_eps must be a finite number"),
    (None, "target_pool", "3d", r"target_pool must be one of '1d', '2d', got '3d'"),
    (None, "tile_size", 100000, r"tile_size must be an int in \[1, 4096\], got 100000"),
    (None, "guidance_scale", -1, r"guidance_scale must be a finite number in \[0, 100\], got -1"),
    (None, "num_inference_steps", 2000, r"num_inference_steps must be an int in \[1, 1000\], got 2000"),
    ("detok", "num_inference_steps", 0, r"detok\.num_inference_steps must be an int in \[1, 1000\], got 0"),
])
def test_config_json_is_type_checked_at_load(ckpt, where, key, value, msg):
    _edit_config(ckpt, where, key, value)
    with pytest.raises(ValueError, match=rf"config\.json: {msg}") as e:
        load(ckpt)
    assert "tokenizer.json" not in str(e.value)


def test_nan_weights_are_refused_at_load_naming_the_tensor(ckpt):
    state = load_file(str(ckpt / "model.safetensors"))
    key = "lvlm.patch_pos_embed"
    state[key] = state[key].clone()
    state[key].view(-1)[0] = math.nan
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"model\.safetensors: NaN or infinite values in 1 tensor\(s\): {key}"):
        load(ckpt)


@pytest.mark.parametrize("device, dtype, exc, msg", [
    ("cuda", None, ValueError, "no CUDA GPU"), ("gpu", None, ValueError, "not a device name"),
    (3.5, None, TypeError, "device must be a device name such as 'cpu' or 'cuda', got 3.5 (float)"), ("cpu", "float32", TypeError, "dtype must be a torch.dtype"),
])
def test_load_checks_device_and_dtype(monkeypatch, device, dtype, exc, msg):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    refused(lambda: load("seedx-tiny", device=device, dtype=dtype), msg, exc)


# --------------------------------------------------------------------------- published loaders

def test_published_json_errors_name_the_file(tmp_path):
    (tmp_path / "config.json").write_text("{ not json")
    refused(lambda: C._llm_config(tmp_path), f"{tmp_path / 'config.json'} is not valid JSON")
    (tmp_path / "config.json").write_text("[1, 2]")
    refused(lambda: C._llm_config(tmp_path), "must hold a JSON object")


def test_an_integer_tensor_where_a_float_is_due_is_refused():
    expected = {"w": torch.empty(2, 3, device="meta"), "step": torch.empty((), dtype=torch.long, device="meta")}
    state = {"w": torch.zeros(2, 3, dtype=torch.int64), "step": torch.tensor(1)}
    refused(lambda: C.check_state_dict(state, expected, "agent.bin", "the agent"),
            "agent.bin: wrong kind of dtype (float vs integer) for 1 key(s) of the agent: w: file torch.int64")
    C.check_state_dict({"w": torch.zeros(2, 3), "step": torch.tensor(1)}, expected, "agent.bin", "the agent")


# --------------------------------------------------------------------------- widgets and trace

def test_widgets_apply_the_seedx_checks(model):
    refused(lambda: W.boi_explorer(None, "a red circle"), "boi_explorer: model must be a seedx_lab SeedX", TypeError)
    refused(lambda: W.token_timeline("model", "a red circle"), "token_timeline: model must be", TypeError)
    refused(lambda: W.token_timeline(model, "a <img_00001> circle"), "prompt contains special-token text")
    refused(lambda: W.token_timeline(model, caption="\ud800"), "caption holds a lone surrogate")
    refused(lambda: W.token_timeline(model, "a red circle", do_sample=True, temperature=math.nan), "temperature")
    refused(lambda: W.boi_explorer(model, "a </img> circle"), "special-token text")
    refused(lambda: W.boi_explorer(model, "a red circle", seed=-1), "seed")
    refused(lambda: W.boi_explorer(model, "a red circle", max_new_tokens=0), "max_new_tokens")


# --------------------------------------------------------------------------- the command line

def test_cli_user_errors_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, msg in ((["tile", str(tmp_path / "none.png")], "not found"),
                      (["describe", str(tmp_path), "--model", str(TINY)], "is a folder"),
                      (["generate", "a red circle", "--device", "cuda"], "no CUDA GPU"),
                      (["convert", "--to-published", str(TINY / "config.json")], "is a file, not a folder")):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and msg in err and "Traceback" not in err, err
    for argv in (["train", "--threads", "0"], ["train", "--threads", "-1"], ["tile", "x", "--base", "100000"],
                 ["generate", "x", "--seed", "-1"]):
        with pytest.raises(SystemExit) as e:
            cli_main(argv)
        assert e.value.code == 2 and "must be an int" in capsys.readouterr().err


def test_cli_internal_errors_exit_1_with_a_hint_and_debug_shows_them(capsys, monkeypatch):
    import seedx_lab.anyres as A

    def bug(*a, **k):
        raise KeyError("a bug")
    monkeypatch.setattr(A, "tile_image", bug)
    assert cli_main(["tile", "x.png"]) == 1
    err = capsys.readouterr().err
    assert "internal error: KeyError" in err and "--debug" in err and err.count("\n") == 1
    with pytest.raises(KeyError):
        cli_main(["tile", "x.png", "--debug"])


def test_the_installed_command_prints_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    r = subprocess.run([sys.executable, "-m", "seedx_lab.cli", "tile", str(tmp_path / "missing.png")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("seedx-lab tile: error:") and "Traceback" not in r.stderr
