"""A training run owns its work folder, resumes only itself, keeps one log row per step, checks where it
writes before it starts, and names the path of any failed write."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from seedx_lab.training import TrainConfig, build_model
from seedx_lab.training import trainer as TR
from seedx_lab.training.workdir import LOCK_NAME, WorkLock, config_changes, trim_log

Trainer = TR.Trainer


class Interrupted(Exception):
    pass


def tiny(tmp_path, **kw):
    base = dict(work=str(tmp_path / "w"), out=str(tmp_path / "m"), vit_steps=2, vae_steps=2, unet_steps=2,
                llm_steps=4, cache_size=8, comprehension_pool=2, story_pool=2, ckpt_every=2, vit_batch=2,
                vae_batch=2, unet_batch=2, llm_batch=2, comprehension_batch=2, log_every=1, parallel=False)
    return TrainConfig.quick_run(**{**base, **kw})


@pytest.fixture
def spare(monkeypatch):
    """One untrained model for every Trainer of a test (building it is the slow part)."""
    m = build_model(0)
    monkeypatch.setattr(TR, "build_model", lambda seed, device, num_img_tokens=64: m)
    return m


# --------------------------------------------------------------------------- the lock

def _holder(work):
    """A second process that takes the work folder's lock and keeps it until killed."""
    code = ("import sys, time; from seedx_lab.training.workdir import WorkLock; "
            f"l = WorkLock({str(work)!r}); print('locked', flush=True); time.sleep(300)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                         env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert p.stdout.readline().strip() == "locked"
    return p


def test_a_second_run_in_the_same_work_folder_is_refused_naming_the_holder(tmp_path, spare):
    cfg = tiny(tmp_path)
    os.makedirs(cfg.work)
    p = _holder(cfg.work)
    try:
        with pytest.raises(ValueError, match=rf"in use by another training run \(pid {p.pid} \(running\) on .*"
                                             rf"started .*{LOCK_NAME}.*--work"):
            Trainer(cfg, progress=False)
    finally:
        p.kill()                                  # dies without releasing: the kernel drops its flock
        p.wait()
    tr = Trainer(cfg, progress=False)             # the stale lock is taken over
    assert tr.lock.held and tr.lock.stale["pid"] == p.pid
    with pytest.raises(ValueError, match=rf"pid {os.getpid()} "):   # and now held by this process
        WorkLock(tmp_path / "w")
    tr.release()
    WorkLock(tmp_path / "w").release()            # released: free again


def test_a_lock_is_released_when_the_run_fails(tmp_path, spare, monkeypatch):
    cfg = tiny(tmp_path)
    monkeypatch.setattr(Trainer, "stage_vit", lambda self: (_ for _ in ()).throw(Interrupted("boom")))
    tr = Trainer(cfg, progress=False)
    with pytest.raises(Interrupted):
        tr.run()
    assert not tr.lock.held
    WorkLock(tmp_path / "w").release()


# --------------------------------------------------------------------------- before any work

@pytest.mark.parametrize("which", ["out", "work"])
def test_outputs_are_checked_before_any_work(tmp_path, monkeypatch, which):
    built = []
    monkeypatch.setattr(TR, "build_model", lambda seed, device, num_img_tokens=64: built.append(1))
    (tmp_path / "file").write_text("x")
    cfg = tiny(tmp_path, **{which: str(tmp_path / "file")})
    with pytest.raises(ValueError, match=rf"{which}: .*file is a file, not a folder"):
        Trainer(cfg, progress=False)
    cfg = tiny(tmp_path, **{which: str(tmp_path / "file" / "below")})
    with pytest.raises(ValueError, match=rf"{which}: .*cannot be created: .*file is a file"):
        Trainer(cfg, progress=False)
    assert built == []


def test_a_device_without_its_hardware_is_refused_before_work(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"device is 'cuda' but no CUDA GPU"):
        Trainer(tiny(tmp_path, device="cuda"), progress=False)
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("kw, exc, msg", [
    (dict(threads=0), ValueError, r"threads must be an int in \[1, 4096\] or None, got 0"),
    (dict(threads=-1), ValueError, r"threads must be .*got -1"),
    (dict(threads=2.0), TypeError, r"threads must be .*got 2\.0 \(float\)"),
    (dict(seed=-1), ValueError, r"seed must be an int in \[0, 2\*\*64 - 1\], got -1"),
    (dict(seed=2 ** 64), ValueError, r"seed must be .*got 18446744073709551616"),
    (dict(seed="0"), TypeError, r"seed must be .*got '0' \(str\)"),
    (dict(out=""), TypeError, r"out must be a non-empty path"),
])
def test_bad_settings_are_refused_by_name(kw, exc, msg):
    with pytest.raises(exc, match=msg):
        TrainConfig.quick_run(**kw)


def test_a_failed_state_write_names_the_file(tmp_path, monkeypatch):
    def full(obj, path, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0\nmore")
    monkeypatch.setattr(TR.torch, "save", full)
    with pytest.raises(OSError, match=r"could not write .*state\.pt: \[enforce fail.*disk full"):
        TR._atomic_save({"step": 1}, tmp_path / "state.pt")
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- resume

def test_config_changes_lists_what_may_not_change():
    a = dict(seed=0, llm_steps=90, out="a", work="w", threads=None, llm_mix=("caption",))
    b = dict(seed=1, llm_steps=50, out="b", work="w2", threads=2, llm_mix=["caption"])
    assert config_changes(a, b) == ["llm_steps: 90 -> 50", "seed: 0 -> 1"]
    assert config_changes(a, dict(a, new_field=3)) == ["new_field: '(absent)' -> 3"]


def test_trim_log_keeps_rows_before_the_resumed_step(tmp_path):
    f = tmp_path / "train_log.csv"
    log = TR.CSVLog(f)
    for stage, n in (("vit", 3), ("llm", 5)):
        for step in range(n):
            log.write(stage, step, 1.0)
    log.close()
    assert trim_log(f, lambda stage, step: stage == "vit" or step < 2) == 3
    assert [(r["stage"], r["step"]) for r in TR.read_log(f)] == [("vit", 0), ("vit", 1), ("vit", 2), ("llm", 0), ("llm", 1)]
    assert trim_log(f, lambda stage, step: True) == 0


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_resume_continues_the_same_run_only(tmp_path, spare, monkeypatch):
    cfg = tiny(tmp_path)
    real = Trainer.llm_examples
    crash = [3]

    def examples(self, kind, step, n):
        if step == crash[0]:
            raise Interrupted(f"killed at llm step {step}")
        return real(self, kind, step, n)

    monkeypatch.setattr(Trainer, "llm_examples", examples)
    with pytest.raises(Interrupted):
        TR.train(cfg, progress=False)
    work = tmp_path / "w"
    logged = [int(r["step"]) for r in TR.read_log(work / "train_log.csv") if r["stage"] == "llm"]
    assert logged == [0, 1, 2]                    # step 2 was logged after the state of step 2 was saved

    for kw, names in ((dict(seed=1), r"seed: 0 -> 1"), (dict(llm_steps=3), r"llm_steps: 4 -> 3"),
                      (dict(seed=1, lr=0.5), r"lr: 0\.001 -> 0\.5; seed: 0 -> 1")):
        with pytest.raises(ValueError, match=rf"cannot resume from .*state\.pt: .*another configuration \({names}\)"
                                             r".*may change only out, work, .*--fresh"):
            Trainer(tiny(tmp_path, **kw), progress=False)
    assert [int(r["step"]) for r in TR.read_log(work / "train_log.csv") if r["stage"] == "llm"] == [0, 1, 2]

    crash[0] = None
    out = TR.train(tiny(tmp_path, out=str(tmp_path / "m2"), threads=1), progress=False)   # may change: resumes
    rows = TR.read_log(work / "train_log.csv")
    keys = [(r["stage"], int(r["step"])) for r in rows]
    assert len(keys) == len(set(keys))            # no step logged twice
    assert [s for st, s in keys if st == "llm"] == [0, 1, 2, 3]
    assert (out / "train_config.json").exists() and '"seed": 0' in (out / "train_config.json").read_text()
