"""Reliability of checkpoints: broken files give errors naming the file and the key; saves are atomic;
training resumes from its last complete state.

Every broken checkpoint is a copy of one good ``SeedX.save`` with a single thing damaged, so each error is
about exactly that thing.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import seedx_lab.training.trainer as TR
from seedx_lab import model as M
from seedx_lab import tokens as T
from seedx_lab.loading import load
from seedx_lab.training import TrainConfig, Trainer, build_model

pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")

KEY = "lvlm.patch_pos_embed"          # a small, always present parameter


@pytest.fixture(scope="module")
def good(model, tmp_path_factory):
    return model.save(tmp_path_factory.mktemp("good") / "ckpt")


@pytest.fixture
def ckpt(good, tmp_path):
    """A fresh copy of the good checkpoint to damage."""
    return shutil.copytree(good, tmp_path / "ckpt")


def snapshot(d):
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}


def leftovers(d):
    return sorted(p.name for p in d.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".tokenizer"))


def edit_weights(d, fn):
    state = load_file(str(d / "model.safetensors"))
    fn(state)
    save_file(state, str(d / "model.safetensors"))


def edit_config(d, fn):
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg)
    (d / "config.json").write_text(json.dumps(cfg))


# --------------------------------------------------------------------------- a good checkpoint

def test_the_good_checkpoint_round_trips(model, good):
    m2 = load(good)
    a, b = model.state_dict(), m2.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert leftovers(good) == []


# --------------------------------------------------------------------------- missing things

@pytest.mark.parametrize("name", ["config.json", "model.safetensors", "tokenizer.json"])
def test_a_missing_file_is_named(ckpt, name):
    (ckpt / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"ckpt has no {name}"):
        load(ckpt)


def test_a_path_that_does_not_exist_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no model named or found at .*nothing-here"):
        load(tmp_path / "nothing-here")


def test_a_file_instead_of_a_folder(ckpt):
    with pytest.raises(ValueError, match=r"model\.safetensors is a file; a seedx-lab model is a folder"):
        load(ckpt / "model.safetensors")


# --------------------------------------------------------------------------- weights

def test_a_missing_key_is_named(ckpt):
    edit_weights(ckpt, lambda s: s.pop(KEY))
    with pytest.raises(ValueError, match=rf"model\.safetensors: missing keys \['{KEY}'\]"):
        load(ckpt)


def test_an_unexpected_key_is_named(ckpt):
    edit_weights(ckpt, lambda s: s.update({"lvlm.extra_head.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match=r"model\.safetensors: .*unexpected keys \['lvlm\.extra_head\.weight'\]"):
        load(ckpt)


def test_a_wrong_shape_names_the_key_and_both_shapes(ckpt, model):
    shape = tuple(model.state_dict()[KEY].shape)
    edit_weights(ckpt, lambda s: s.update({KEY: torch.zeros(shape[0] + 1, shape[1])}))
    with pytest.raises(ValueError, match=rf"model\.safetensors: size mismatch for {KEY}: copying a param with shape "
                                         rf"torch\.Size\(\[{shape[0] + 1}, {shape[1]}\]\) from checkpoint, the shape "
                                         rf"in current model is torch\.Size\(\[{shape[0]}, {shape[1]}\]\)"):
        load(ckpt)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_an_integer_tensor_where_a_float_belongs_is_named(ckpt, model, dtype):
    shape = model.state_dict()[KEY].shape
    edit_weights(ckpt, lambda s: s.update({KEY: torch.ones(shape, dtype=dtype)}))
    with pytest.raises(ValueError, match=rf"model\.safetensors: wrong kind of dtype .* {KEY}: file {dtype} vs "
                                         r"model torch\.float32"):
        load(ckpt)


def test_half_precision_weights_are_accepted(ckpt, model):
    edit_weights(ckpt, lambda s: s.update({k: v.half() for k, v in s.items() if v.is_floating_point()}))
    m2 = load(ckpt)
    assert m2.dtype == torch.float32
    torch.testing.assert_close(m2.state_dict()[KEY], model.state_dict()[KEY].half().float())


@pytest.mark.parametrize("cut", ["header", "half", "last_bytes", "empty", "garbage"])
def test_a_truncated_or_corrupt_safetensors_file_is_named(ckpt, cut):
    f = ckpt / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"header": data[:10], "half": data[: len(data) // 2], "last_bytes": data[:-7],
                   "empty": b"", "garbage": b"\x00\x01not safetensors at all" * 50}[cut])
    with pytest.raises(ValueError, match=r"model\.safetensors could not be read \(truncated or corrupt\?\)"):
        load(ckpt)


# --------------------------------------------------------------------------- config.json

@pytest.mark.parametrize("path", ["llm.hidden_size", "vit.width", "detok.depth", "tile_size", "llm.vocab_size"])
def test_a_config_with_a_missing_field_names_the_file_and_the_key(ckpt, path):
    def drop(cfg):
        *parents, last = path.split(".")
        d = cfg
        for p in parents:
            d = d[p]
        del d[last]
    edit_config(ckpt, drop)
    with pytest.raises(ValueError, match=rf"config\.json: config is missing the field\(s\) {path}"):
        load(ckpt)


def test_a_config_without_a_whole_section(ckpt):
    edit_config(ckpt, lambda c: c.pop("llm"))
    with pytest.raises(ValueError, match=r"config\.json: config is missing the field 'llm'"):
        load(ckpt)


def test_a_config_with_an_unknown_field(ckpt):
    edit_config(ckpt, lambda c: c["vit"].update(colour="blue"))
    with pytest.raises(ValueError, match=r"config\.json: .*unknown field.*colour"):
        load(ckpt)
    edit_config(ckpt, lambda c: (c["vit"].pop("colour"), c.update(wings=2)))
    with pytest.raises(ValueError, match=r"config\.json: .*unknown field.*wings"):
        load(ckpt)


@pytest.mark.parametrize("data, msg", [(b'{"vit": ', "is not valid JSON"), (b"[1, 2]", "must be a JSON object"),
                                       (b'{"vit": 3, "llm": {}, "detok": {}}', "field 'vit' must be an object"),
                                       (b"\xff\xfe{}", "is not valid JSON")])
def test_a_config_that_is_not_a_config(ckpt, data, msg):
    (ckpt / "config.json").write_bytes(data)
    with pytest.raises(ValueError, match=rf"config\.json.*{msg}"):
        load(ckpt)


def test_an_impossible_config_value_names_the_file(ckpt):
    edit_config(ckpt, lambda c: c["detok"].update(heads=0))
    with pytest.raises(ValueError, match=r"config\.json: DetokenizerConfig\.heads must be positive"):
        load(ckpt)


def test_a_vocabulary_smaller_than_the_tokenizer(ckpt):
    edit_config(ckpt, lambda c: c["llm"].update(vocab_size=100))
    with pytest.raises(ValueError, match=r"tokenizer\.json does not fit .*config\.json: tokenizer has \d+ tokens "
                                         r"but the LLM vocabulary is 100"):
        load(ckpt)


# --------------------------------------------------------------------------- tokenizer

def test_a_tokenizer_without_the_special_tokens_names_the_file_and_the_token(ckpt):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(vocab={"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "red": 4}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    plain = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                    unk_token="<unk>")
    for f in ckpt.glob("tokenizer*.json"):
        f.unlink()
    plain.save_pretrained(ckpt)
    with pytest.raises(ValueError, match=r"tokenizer\.json: tokenizer lacks 68 SEED-X special token\(s\) "
                                         r"\(<img>, </img>, <patch>"):
        load(ckpt)


def test_a_corrupt_tokenizer_names_its_folder(ckpt):
    (ckpt / "tokenizer.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(ValueError, match=r"could not read the tokenizer in .*ckpt"):
        load(ckpt)


# --------------------------------------------------------------------------- atomic saves

class Interrupted(Exception):
    pass


def test_an_interrupted_weights_write_leaves_the_old_checkpoint(ckpt, monkeypatch):
    import safetensors.torch as st

    before = snapshot(ckpt)

    def half_write(state, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\x00" * 1000)            # a torn file ...
        raise Interrupted("power cut")         # ... and then the writer dies

    monkeypatch.setattr(st, "save_file", half_write)
    with pytest.raises(Interrupted):
        build_model(1).save(ckpt)
    assert snapshot(ckpt) == before and leftovers(ckpt) == []
    load(ckpt)


@pytest.mark.parametrize("where", ["tokenizer", "extra_file", "commit_interrupt"])
def test_a_failure_after_the_weights_were_written_leaves_the_old_checkpoint(ckpt, monkeypatch, where):
    """All files are committed together: new weights never sit beside an old or missing config/tokenizer."""
    before = snapshot(ckpt)
    other = build_model(1)
    extra = None
    if where == "tokenizer":
        def broken(tok, directory):
            (directory / "tokenizer.json").write_text("{")
            raise Interrupted("disk full")
        monkeypatch.setattr(T, "save_tokenizer", broken)
    elif where == "extra_file":
        extra = {"notes.txt": "ok", "no_such_folder/x.txt": "?"}      # the second write fails
    else:
        real = M.os.replace
        calls = []

        def replace(a, b):                      # a KeyboardInterrupt arriving while files are staged
            calls.append(b)
            raise KeyboardInterrupt

        monkeypatch.setattr(M.os, "replace", replace)
    with pytest.raises((Interrupted, OSError, KeyboardInterrupt)):
        other.save(ckpt, extra_files=extra)
    if where == "commit_interrupt":
        monkeypatch.setattr(M.os, "replace", real)
    assert snapshot(ckpt) == before and leftovers(ckpt) == []
    assert torch.equal(load(ckpt).state_dict()[KEY], build_model(0).state_dict()[KEY])


def test_a_save_over_an_old_checkpoint_replaces_it_whole(ckpt):
    other = build_model(1)
    other.save(ckpt, extra_files={"notes.txt": "hello"})
    assert leftovers(ckpt) == [] and (ckpt / "notes.txt").read_text() == "hello"
    assert torch.equal(load(ckpt).state_dict()[KEY], other.state_dict()[KEY])


def test_train_atomic_save_keeps_the_old_state_on_failure(tmp_path, monkeypatch):
    f = tmp_path / "state.pt"
    TR._atomic_save({"step": 1}, f)
    before = f.read_bytes()
    real = torch.save

    def torn(obj, path, *a, **k):
        with open(path, "wb") as fh:
            fh.write(b"PK\x03\x04 torn")
        raise Interrupted("killed")

    monkeypatch.setattr(TR.torch, "save", torn)
    with pytest.raises(Interrupted):
        TR._atomic_save({"step": 2}, f)
    monkeypatch.setattr(TR.torch, "save", real)
    assert f.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]
    assert torch.load(f, weights_only=False) == {"step": 1}


# --------------------------------------------------------------------------- training resumes

def tiny_config(tmp_path):
    return TrainConfig.quick_run(work=str(tmp_path), out=str(tmp_path / "m"), vit_steps=4, vae_steps=2,
                                 unet_steps=2, llm_steps=3, cache_size=16, comprehension_pool=4, story_pool=4,
                                 ckpt_every=2, vit_batch=2, vae_batch=2, unet_batch=2, llm_batch=3, log_every=1,
                                 parallel=False)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_resumes_from_its_last_complete_state(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    steps = {"vit": [], "llm": []}
    real_vit_batch, real_examples = TR.vit_batch, Trainer.llm_examples
    crash_at = [2]

    def vit_batch(cfg_, step, base):
        steps["vit"].append(step)
        return real_vit_batch(cfg_, step, base)

    def llm_examples(self, kind, step, n):
        steps["llm"].append(step)
        if step == crash_at[0]:
            raise Interrupted(f"killed at llm step {step}")
        return real_examples(self, kind, step, n)

    monkeypatch.setattr(TR, "vit_batch", vit_batch)
    monkeypatch.setattr(Trainer, "llm_examples", llm_examples)
    with pytest.raises(Interrupted):
        TR.train(cfg, progress=False)
    assert steps == {"vit": [0, 1, 2, 3], "llm": [0, 1, 2]}
    st = torch.load(tmp_path / "state.pt", weights_only=False)
    assert (st["stage"], st["step"], st["done"]) == ("llm", 2, ["vit", "vae", "vae_calibrated", "unet"])
    assert leftovers(tmp_path) == [] and not (tmp_path / "m").exists()

    steps.update(vit=[], llm=[])
    crash_at[0] = None
    out = TR.train(cfg, progress=False)                    # resume
    assert steps == {"vit": [], "llm": [2]}                # from the saved step, not from zero
    st = torch.load(tmp_path / "state.pt", weights_only=False)
    assert st["stage"] is None and st["done"] == ["vit", "vae", "vae_calibrated", "unet", "llm"]
    rows = TR.read_log(tmp_path / "train_log.csv")
    assert [int(r["step"]) for r in rows if r["stage"] == "llm"] == [0, 1, 2]
    assert leftovers(out) == [] and load(out).config.llm.num_hidden_layers == 4


def test_a_corrupt_training_state_is_refused_by_name(tmp_path, monkeypatch):
    cfg = tiny_config(tmp_path)
    spare = build_model(0)
    monkeypatch.setattr(TR, "build_model", lambda seed, device, num_img_tokens=64: spare)      # one model for the four tries
    (tmp_path / "state.pt").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(ValueError, match=r"cannot resume from .*state\.pt.*--fresh"):
        Trainer(cfg, progress=False)
    torch.save({"model": {"nope": torch.zeros(1)}, "scaling_factor": 1.0, "done": [], "stage": None, "step": 0,
                "opt": None}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match=r"cannot resume from .*state\.pt.*different configuration.*--fresh"):
        Trainer(cfg, progress=False)
    torch.save({"model": spare.state_dict()}, tmp_path / "state.pt")
    with pytest.raises(ValueError, match=r"cannot resume from .*state\.pt: missing entry 'scaling_factor'"):
        Trainer(cfg, progress=False)
    Trainer(cfg, fresh=True, progress=False)               # --fresh starts over
    assert not (tmp_path / "state.pt").exists()


# --------------------------------------------------------------------------- convert is atomic

def tree(d):
    """Every file under ``d`` (hidden temporaries too) with its bytes."""
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["writing", "swapping"])
def test_an_interrupted_convert_leaves_the_old_layout_whole(model, tmp_path, monkeypatch, where):
    """A failure while the new layout is written (a full disk at its second weight file, after the new LLM)
    or while it is swapped in leaves the old layout byte for byte, and no temporary folder."""
    from seedx_lab.published import checkpoints as C

    root = tmp_path / "pretrained"
    C.write_published_layout(model, root)
    before = tree(root)
    other = build_model(1).eval()
    if where == "writing":
        real, calls = C.torch.save, []

        def save(obj, path, *a, **k):
            calls.append(path)
            if len(calls) == 2:
                raise OSError(28, "No space left on device", str(path))
            return real(obj, path, *a, **k)
        monkeypatch.setattr(C.torch, "save", save)
    else:
        real, calls, failed = C.os.replace, [], []

        def replace(a, b, *x, **k):                 # park the third old entry, after two were swapped in
            calls.append(b)
            if Path(b).parent.name.startswith(".seedx-old-") and sum(Path(c).parent == root for c in calls) >= 2 \
                    and not failed:
                failed.append(b)
                raise OSError(5, "Input/output error", str(b))
            return real(a, b, *x, **k)
        monkeypatch.setattr(C.os, "replace", replace)
    with pytest.raises(OSError):
        C.write_published_layout(other, root)
    monkeypatch.undo()
    assert tree(root) == before and calls
    if where == "swapping":                          # it failed parking an old entry, after two were swapped
        assert failed and sum(Path(c).parent == root for c in calls) >= 4      # ... and those two were put back
    C.write_published_layout(other, root)            # without a failure the new layout replaces it
    after = tree(root)
    assert after.keys() == before.keys() and after["seed_x/agent/pytorch_model.bin"] != before["seed_x/agent/pytorch_model.bin"]
