"""Reliability of ``seedx_lab.trace``: whatever goes wrong inside a trace, no hook, wrapper, observer or
processor flag of it is left behind and the model runs exactly as before; a capture that would exceed
``max_bytes`` is refused before anything runs, with the estimate in the message."""
import pytest
import torch
from PIL import Image

from seedx_lab.generation import AutoImageTokenGenerationProcessor
from seedx_lab.lab.trace import TraceMemoryError, estimate_bytes, trace
from seedx_lab.training import build_model

pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

CAPTION = "a red circle"
IMAGE = Image.new("RGB", (40, 20), (0, 128, 255))


def hooks(model):
    """Every forward hook / pre-hook on every module, by module name."""
    return {n: (tuple(m._forward_hooks.values()), tuple(m._forward_pre_hooks.values()))
            for n, m in model.named_modules()}


@pytest.fixture(scope="module")
def model():
    m = build_model(0).eval()
    m.generate_image(CAPTION, num_inference_steps=1)     # transformers installs its own hooks on first use
    return m


@pytest.fixture(scope="module")
def reference(model):
    """What the model does untraced: the state every test must leave behind, and outputs to compare."""
    return dict(hooks=hooks(model), sched=dict(model.detok.scheduler.__dict__),
                describe=model.describe(IMAGE, max_new_tokens=4),
                tokens=model.generate_image(CAPTION, num_inference_steps=1).output.sequences)


def assert_clean(model, reference):
    assert hooks(model) == reference["hooks"]
    assert model.lvlm.generation_observers == []
    assert model.detok.scheduler.__dict__.keys() == reference["sched"].keys()
    assert model.detok.step_callbacks == []
    assert all(model.detok.scheduler.__dict__[k] is v for k, v in reference["sched"].items()
               if callable(v))
    assert not model.training


def assert_same_results(model, reference):
    assert model.describe(IMAGE, max_new_tokens=4) == reference["describe"]
    assert torch.equal(model.generate_image(CAPTION, num_inference_steps=1).output.sequences, reference["tokens"])


class Boom(Exception):
    pass


# --------------------------------------------------------------------------- errors inside a trace

def test_a_user_error_inside_a_trace(model, reference, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        with trace(model):
            model.describe(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="special-token text '<img>'"):
        with trace(model, capture=["llm.*", "processor.decisions"]):
            model.generate_image("<img>")
    assert_clean(model, reference)


def test_an_error_raised_by_a_decoder_layer_mid_generation(model, reference, monkeypatch):
    layer = model.lvlm.llm.model.layers[1]
    real = layer.forward
    calls = [0]

    def flaky(*a, **k):
        calls[0] += 1
        if calls[0] == 5:                              # a few decoding steps in
            raise Boom("layer failed")
        return real(*a, **k)

    monkeypatch.setattr(layer, "forward", flaky)
    ids = torch.tensor([model.encode_ids(CAPTION)])           # no <img> at the end: decoding goes token by token
    with pytest.raises(Boom):
        with trace(model, capture=["llm.*", "processor.decisions", "detok.step.*"]) as t:
            model.lvlm.generate(ids, max_new_tokens=20)
    monkeypatch.undo()
    assert calls[0] == 5 and "llm.final" in t                 # it had captured until then, and kept it
    assert len(t["processor.decisions"]) == 4                 # one per decoding step that finished
    assert_clean(model, reference)
    assert_same_results(model, reference)


def test_a_user_processor_gets_its_record_flag_and_decisions_back_after_an_error(model, reference):
    p = AutoImageTokenGenerationProcessor(token_ids=model.token_ids, mode="strict")

    class FailLater:
        n = 0

        def __call__(self, ids, scores):
            FailLater.n += 1
            if FailLater.n == 3:
                raise Boom("processor failed")
            return scores

    ids = torch.tensor([model.encode_ids(CAPTION)])
    with pytest.raises(Boom):
        with trace(model, capture=["processor.decisions"]) as t:
            model.lvlm.generate(ids, max_new_tokens=5, logits_processor=[p, FailLater()])
    assert p.record is False and p.decisions == []          # as it was before the trace
    assert len(t["processor.decisions"]) == 3               # p decided 3 times; the 3rd step then failed
    assert_clean(model, reference)


def test_an_error_inside_a_diffusion_step_restores_the_scheduler(model, reference, monkeypatch):
    sched = model.detok.scheduler
    real = type(sched).step

    def failing(self, *a, **k):
        raise Boom("scheduler failed")

    monkeypatch.setattr(type(sched), "step", failing)
    feats = torch.zeros(64, model.config.vit.output_dim)
    with pytest.raises(Boom):
        with trace(model, capture=["detok.*"]):
            model.draw(feats, num_inference_steps=2)
    monkeypatch.setattr(type(sched), "step", real)
    assert_clean(model, reference)


def test_keyboard_interrupt_inside_a_trace(model, reference):
    with pytest.raises(KeyboardInterrupt):
        with trace(model):
            model.encode_image(IMAGE)
            raise KeyboardInterrupt
    assert_clean(model, reference)


def test_an_error_while_installing_removes_what_was_installed(model, reference, monkeypatch):
    from seedx_lab import trace as trace_module

    monkeypatch.setattr(trace_module.Trace, "_watch_steps", lambda self, detok: (_ for _ in ()).throw(Boom("x")))
    with pytest.raises(Boom):
        with trace(model):
            raise AssertionError("the body must not run")
    monkeypatch.undo()
    assert_clean(model, reference)


def test_an_inner_trace_failing_leaves_the_outer_one_working(model, reference):
    ids = torch.tensor([model.encode_ids(CAPTION)])
    with trace(model, capture=["llm.final"]) as outer:
        with pytest.raises(Boom):
            with trace(model, capture=["llm.*", "processor.decisions", "detok.step.*"]):
                model.lvlm.llm(input_ids=ids)
                raise Boom("inner")
        model.lvlm.llm(input_ids=ids)
    assert len(outer.pieces("llm.final")) == 2
    assert_clean(model, reference)


# --------------------------------------------------------------------------- memory limits

def test_a_capture_above_the_limit_is_refused_before_it_starts(model, reference, monkeypatch):
    expect = dict(seq_len=70, images=1, steps=2)
    est = estimate_bytes(model, **expect)
    ran = []
    monkeypatch.setattr(model.lvlm.llm, "forward", lambda *a, **k: ran.append(1))
    with pytest.raises(TraceMemoryError, match=rf"refusing to trace: the estimated capture is {est} bytes .*"
                                               rf"above max_bytes={est - 1}") as e:
        with trace(model, max_bytes=est - 1, expect=expect):
            model.generate_image(CAPTION, num_inference_steps=2)
    monkeypatch.undo()
    assert ran == [] and isinstance(e.value, MemoryError)
    assert "narrow capture=" in str(e.value)
    assert_clean(model, reference)


def test_the_estimate_follows_the_filter(model, reference):
    expect = dict(seq_len=70, views=3)
    small = estimate_bytes(model, capture=["llm.final"], **expect)
    full = estimate_bytes(model, **expect)
    assert 0 < small < full
    with trace(model, capture=["llm.final"], max_bytes=small, expect=expect):     # at the limit: allowed
        pass
    with pytest.raises(TraceMemoryError, match=f"{full} bytes"):
        with trace(model, max_bytes=small, expect=expect):
            pass
    assert_clean(model, reference)


def test_a_run_that_outgrows_the_limit_stops_within_it(model, reference):
    with pytest.raises(TraceMemoryError, match=r"exceeded max_bytes=50000"):
        with trace(model, capture=["llm.*"], max_bytes=50_000) as t:
            model.generate_image(CAPTION, num_inference_steps=1)
    assert 0 < t.nbytes <= 50_000
    assert_clean(model, reference)
    assert_same_results(model, reference)


@pytest.mark.parametrize("kwargs, err, msg", [
    (dict(capture=["llm.layerz.*"]), ValueError, r"llm\.layerz"),
    (dict(max_bytes=-1), ValueError, r"max_bytes must be a finite number in \(0, inf\) or None, got -1"),
    (dict(max_bytes=float("nan")), ValueError, r"max_bytes must be a finite number .*got nan"),
    (dict(max_bytes="1e6"), TypeError, r"max_bytes must be a finite number .*got '1e6' \(str\)"),
    (dict(expect=dict(seq_len=5, frames=2)), ValueError, r"unknown key\(s\) \['frames'\]"),
    (dict(dtype=torch.int8), ValueError, "dtype must be a floating torch.dtype"),
])
def test_bad_trace_arguments_are_refused_before_anything_is_installed(model, reference, kwargs, err, msg):
    with pytest.raises(err, match=msg):
        trace(model, **kwargs)
    assert_clean(model, reference)


def test_a_trace_of_something_that_is_not_a_model():
    with pytest.raises(TypeError, match="trace needs a torch.nn.Module.*got str"):
        trace("seedx-tiny")
