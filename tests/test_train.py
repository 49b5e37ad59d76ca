"""Training helpers of seedx-tiny: data encoding, batching, the stage-a targets, and a micro run."""
import math
import os
from pathlib import Path

import pytest
import torch

from seedx_lab import tokens as T
from seedx_lab import world as W
from seedx_lab.sequences import caption_pieces, collate, comprehension_pieces, encode_pieces, story_pieces
from seedx_lab.training.data import _cells, position_labels
from seedx_lab.training.trainer import TrainConfig, Trainer, read_log


def test_cells_are_raster_order_pixel_blocks():
    x = torch.arange(3 * 8 * 8, dtype=torch.float).view(3, 8, 8)
    c = _cells(x, 4)                                   # 16 cells of 2x2 pixels
    assert c.shape == (16, 12)
    # cell 5 = row 1, col 1 -> pixels rows 2-3, cols 2-3 of every channel
    want = torch.cat([x[ch, 2:4, 2:4].reshape(-1) for ch in range(3)])
    assert torch.equal(c[5], want)


def test_position_labels_name_what_is_where():
    scene = W.Scene(64, 64, (250, 250, 250), [W.Obj("star", "blue", "big", 0.2, 0.5), W.Obj("circle", "red", "small", 0.5, 0.15)])
    col, shp = position_labels(scene)
    left, top = W.POSITIONS.index("left"), W.POSITIONS.index("top")
    assert col[left] == list(W.COLOURS).index("blue") + 1 and shp[left] == W.SHAPES.index("star") + 1
    assert col[top] == list(W.COLOURS).index("red") + 1 and shp[top] == W.SHAPES.index("circle") + 1
    assert int((col > 0).sum()) == 2


def test_vit_batches_come_from_a_pool_of_rendered_views():
    from seedx_lab.training.data import _seed_of, vit_batch, vit_example
    cfg = TrainConfig(vit_pool=6, vit_batch=5)
    a, b = vit_batch(cfg, 3, 64), vit_batch(cfg, 3, 64)
    shapes = [tuple(t.shape) for t in a]
    assert shapes == [(5, 3, 64, 64), (5, 256, 48), (5, 256), (5, 256), (5, 5), (5, 5)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))                      # a step's batch is seeded
    pool = [vit_example(_seed_of(cfg, "vit", 0, 20_000_000 + k), k % 2 == 0, 64) for k in range(6)]
    for row in range(5):                                                    # every row is one pool entry
        assert any(all(torch.equal(t[row], e) for t, e in zip(a, ex)) for ex in pool)
    cfg0 = TrainConfig(vit_pool=0, vit_batch=2)
    fresh = vit_batch(cfg0, 7, 64)                                          # no pool: rendered afresh per step
    for i in range(2):
        ex = vit_example(_seed_of(cfg0, "vit", 7, i), i % 2 == 0, 64)
        assert all(torch.equal(t[i], e) for t, e in zip(fresh, ex))


def test_object_shape_loss_reads_the_mean_of_each_shapes_cells():
    from seedx_lab.training.data import ViTHeads
    torch.manual_seed(0)
    heads = ViTHeads(8, 48)
    feats = torch.randn(2, 256, 8)
    cells = torch.zeros(2, 256, dtype=torch.long)
    cells[0, :10], cells[0, 50:60], cells[1, 100:120] = 1, 3, 4            # circle + triangle; star
    means = torch.stack([feats[0, :10].mean(0), feats[0, 50:60].mean(0), feats[1, 100:120].mean(0)])
    want = torch.nn.functional.cross_entropy(heads.object_shape(means), torch.tensor([0, 2, 3]))
    torch.testing.assert_close(heads.object_shape_loss(feats, cells), want)
    assert heads.object_shape_loss(feats, torch.zeros_like(cells)) == 0      # nothing to name


def test_encode_pieces_labels_follow_seedx(model):
    feats = torch.zeros(256, model.config.vit.output_dim)
    ids, labels, flags, cf, cp, gf = encode_pieces(model, caption_pieces("a red circle on the left .", feats))
    tid = model.token_ids
    b, = T.find_image_blocks(ids, tid)
    assert b.complete and b.n_tokens == 64 and flags == [True] and len(gf) == 1
    assert labels[b.start] == tid.boi                                    # <img> is a target
    assert all(l == -100 for l in labels[b.start + 1:b.end])           # image tokens and </img> are not
    assert labels[-1] == model.tokenizer.eos_token_id and labels[0] == -100
    # comprehension: the question and the image are context, only the answer is a target
    views, pos = torch.zeros(3, 256, feats.shape[1]), torch.rand(3, 2)
    ids, labels, flags, cf, cp, gf = encode_pieces(model, comprehension_pieces(views, pos, "describe the image .", "a red star ."))
    assert flags == [False] * 3 and len(cf) == 1 and gf == []
    answer = model.tokenizer.encode("a red star .", add_special_tokens=False)
    assert [l for l in labels if l != -100] == answer + [model.tokenizer.eos_token_id]


def test_collate_masks_match_blocks(model):
    D = model.config.vit.output_dim
    exs = [encode_pieces(model, caption_pieces("a red circle .", torch.randn(256, D))),
           encode_pieces(model, comprehension_pieces(torch.randn(2, 256, D), torch.rand(2, 2), "describe .", "a star .")),
           encode_pieces(model, story_pieces(W.story_sample(3).segments, None))]
    b = collate(model, exs)
    assert b["input_ids"].shape[0] == 3
    assert int(b["ids_gen_mask"].sum()) == 64 and int(b["ids_cmp_mask"].sum()) == 128   # story blocks carry no target
    assert b["target_features"].shape == (1, 256, D) and b["image_features"].shape == (2, 256, D)
    assert (b["labels"][b["attention_mask"] == 0] == -100).all()
    out = model.lvlm(**b)
    assert torch.isfinite(out["loss"]) and out["rec"].shape == (1, 64, D)


def test_micro_training_run_logs_and_writes_a_loadable_model(tmp_path, monkeypatch):
    from seedx_lab.loading import load
    # one step of stages a and b is enough to log a row and calibrate; stage c takes three, the mix in turn
    cfg = TrainConfig.quick_run(work=str(tmp_path / "w"), out=str(tmp_path / "m"), vit_steps=1, vae_steps=1,
                                unet_steps=1, llm_steps=3, cache_size=8, comprehension_pool=2, story_pool=2,
                                vit_batch=2, vae_batch=2, unet_batch=2, llm_batch=3, comprehension_batch=5,
                                log_every=1, llm_mix=["comprehension", "caption"], parallel=False)
    asked = []
    real = Trainer.llm_examples
    monkeypatch.setattr(Trainer, "llm_examples", lambda self, kind, step, n: asked.append((kind, n)) or real(self, kind, step, n))
    out = Trainer(cfg, fresh=True, progress=False).run()
    assert asked == [("comprehension", 5), ("caption", 3), ("comprehension", 5)]   # the mix in turn, own batch
    rows = read_log(tmp_path / "w" / "train_log.csv")
    assert [r["stage"] for r in rows] == ["vit", "vae", "unet"] + ["llm"] * 3
    assert all(r["loss"] == r["loss"] for r in rows)                      # no NaN
    m = load(out)
    assert m.detok.vae.config.scaling_factor != 1.0                         # calibrated after stage b
    assert (out / "train_log.csv").exists() and (out / "train_config.json").exists()


def _lane_config(tmp_path, name, **kw):
    base = dict(work=str(tmp_path / name), out=str(tmp_path / name / "m"), vit_steps=3, vae_steps=2, unet_steps=3,
                llm_steps=4, cache_size=8, comprehension_pool=3, story_pool=2, vit_batch=2, vae_batch=2, unet_batch=2,
                llm_batch=3, comprehension_batch=2, log_every=1, ckpt_every=2, threads=1)
    return TrainConfig.quick_run(**{**base, **kw})


def test_parallel_lanes_write_the_same_weights_as_one_process(tmp_path):
    """Stages b and c in two processes give what one process gives with the same thread count, bit for bit:
    each lane owns its parameters, and the merge takes each from its owner."""
    from seedx_lab.loading import load
    seq = load(Trainer(_lane_config(tmp_path, "seq", parallel=False), fresh=True, progress=False).run())
    tr = Trainer(_lane_config(tmp_path, "par"), fresh=True, progress=False)
    assert tr.parallel
    par = load(tr.run())
    a, b = seq.state_dict(), par.state_dict()
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    assert par.detok.vae.config.scaling_factor == seq.detok.vae.config.scaling_factor != 1.0
    # the untrained model differs, so the equality above is not two untouched copies
    assert not torch.equal(b["lvlm.llm.model.embed_tokens.weight"], Trainer(_lane_config(tmp_path, "raw"), fresh=True,
                           progress=False).model.state_dict()["lvlm.llm.model.embed_tokens.weight"])
    key = lambda r: (r["stage"], r["step"], r["loss"])
    rows_seq, rows_par = (read_log(tmp_path / n / "train_log.csv") for n in ("seq", "par"))
    assert sorted(map(key, rows_par)) == sorted(map(key, rows_seq)) and len(rows_par) == 3 + 2 + 3 + 4
    st = torch.load(tmp_path / "par" / "state.pt", weights_only=False)
    assert st["done"] == ["vit", "vae", "vae_calibrated", "unet", "llm"] and st["stage"] is None
    assert sorted(p.name for p in (tmp_path / "par").glob("state*")) == ["state.pt"]      # lane states merged


def _cmdline(proc_dir) -> bytes:
    try:
        return (proc_dir / "cmdline").read_bytes()
    except OSError:                                   # gone meanwhile
        return b""


def _ppid(proc_dir) -> int | None:
    try:
        return int((proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):          # gone meanwhile
        return None


def test_a_failing_lane_stops_the_run_and_names_its_state(tmp_path):
    cfg = _lane_config(tmp_path, "bad")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "state-llm.pt").write_bytes(b"not a state")
    with pytest.raises(ValueError, match=r"training lane 'llm': cannot resume from .*state-llm\.pt.*--fresh"):
        Trainer(cfg, progress=False).run()
    # lanes of this process only (another test may run lanes at the same time, e.g. under xdist)
    lanes = [p for p in Path("/proc").glob("[0-9]*") if _ppid(p) == os.getpid() and b"_lane_main" in _cmdline(p)]
    assert lanes == []                                # the other lane was stopped, not left running
    assert not (tmp_path / "bad" / "m").exists()
    # a one-process run refuses to resume over a lane's state instead of silently dropping it (the detok lane
    # may have saved a state of its own before it was stopped: every state is named)
    with pytest.raises(ValueError, match=r"state-llm\.pt (holds a lane|hold the lanes) of a parallel run.*--fresh"):
        Trainer(_lane_config(tmp_path, "bad", parallel=False), progress=False).run()
    (tmp_path / "bad" / "state-detok.pt").write_bytes(b"a lane state")
    with pytest.raises(ValueError, match=r"state-detok\.pt and .*state-llm\.pt hold the lanes of a parallel run"):
        Trainer(_lane_config(tmp_path, "bad", parallel=False), progress=False).run()


def test_an_interrupted_parallel_run_resumes_each_lane_from_its_own_state(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from dataclasses import asdict
    from seedx_lab.loading import load
    cfg = _lane_config(tmp_path, "int", unet_steps=30, llm_steps=40, ckpt_every=4)
    work = tmp_path / "int"
    script = f"from seedx_lab.training import TrainConfig, train; train(TrainConfig(**{asdict(cfg)!r}), progress=False)"
    # Ctrl-C must reach the run even when pytest itself was started with SIGINT ignored (a background job
    # of a non-interactive shell): the child starts with the default disposition, so Python turns it into
    # KeyboardInterrupt as it does in a terminal
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (work / "state-llm.pt").exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        assert (work / "state-llm.pt").exists(), "the llm lane never saved a state"
    finally:
        os.killpg(proc.pid, signal.SIGINT)                 # Ctrl-C: the parent and both lanes
        proc.wait(60)
    saved = torch.load(work / "state-llm.pt", weights_only=False)
    assert saved["stage"] == "llm" and saved["step"] % 4 == 0 and 0 < saved["step"] < 40
    assert not (work / "m").exists()

    out = Trainer(cfg, progress=False).run()               # resume
    llm = [int(r["step"]) for r in read_log(work / "train_log.csv") if r["stage"] == "llm"]
    # the first run's rows (up to where it was stopped), then the resumed run's from the lane's saved step
    k = saved["step"]
    assert any(llm[:m] == list(range(m)) and llm[m:] == list(range(k, 40)) for m in range(k, len(llm) + 1)), llm
    assert llm.count(0) == 1                                    # not started again from zero
    assert sorted(p.name for p in work.glob("state*")) == ["state.pt"]
    assert torch.load(work / "state.pt", weights_only=False)["done"] == ["vit", "vae", "vae_calibrated", "unet", "llm"]
    assert load(out).config.llm.num_hidden_layers == 4


def test_lanes_end_when_their_parent_is_killed_outright(tmp_path):
    """A parent killed with SIGKILL cannot stop its lanes; they notice by themselves. They are killed while
    building their caches (large pools here), when they send nothing, so a broken pipe would not end them."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from dataclasses import asdict
    cfg = _lane_config(tmp_path, "kill", cache_size=6000, comprehension_pool=3000, story_pool=1500)
    script = f"from seedx_lab.training import TrainConfig, train; train(TrainConfig(**{asdict(cfg)!r}), progress=False)"
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def lanes():
        out = []
        for p in Path("/proc").glob("[0-9]*"):
            if _ppid(p) == proc.pid and b"_lane_main" in _cmdline(p):
                out.append(p)
        return out

    try:
        deadline = time.time() + 240
        while len(found := lanes()) < 2 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert len(found) == 2, "both lanes should have started"
        time.sleep(3)                                      # past their imports, into the cache build
        proc.kill()                                        # SIGKILL: no chance to stop the lanes
        proc.wait(30)
        deadline = time.time() + 10
        while any(b"_lane_main" in _cmdline(p) for p in found) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(b"_lane_main" in _cmdline(p) for p in found), "a lane outlived its parent"
        assert not (tmp_path / "kill" / "state-llm.pt").exists()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_cli_train_runs_the_lanes_unless_told_to_stay_in_one_process(monkeypatch, tmp_path):
    from seedx_lab import cli
    from seedx_lab.training import trainer as TR
    seen = []
    monkeypatch.setattr(TR, "train", lambda cfg, fresh, progress: seen.append(cfg))
    for extra in ([], ["--sequential"]):
        assert cli.main(["train", "--quick", "--work", str(tmp_path), *extra]) == 0
    assert [c.parallel for c in seen] == [True, False] and all(c.quick for c in seen)


def test_llm_mix_names_known_tasks():
    with pytest.raises(ValueError, match=r"llm_mix must be a non-empty sequence of caption, comprehension, story; got \['captions'\]"):
        TrainConfig(llm_mix=("captions",))
    with pytest.raises(ValueError, match="non-empty"):
        TrainConfig(llm_mix=())


def test_unet_timesteps_are_logit_normal_or_left_to_the_detokenizer():
    from seedx_lab.training.data import unet_timesteps
    g = torch.Generator().manual_seed(0)
    t = unet_timesteps(TrainConfig(unet_t_mean=1.0, unet_t_std=1.0), g, 4000)
    assert t.shape == (4000,) and t.dtype == torch.long and 0 <= int(t.min()) and int(t.max()) <= 999
    # the median of T * sigmoid(N(1, 1)) is T * sigmoid(1); a quarter lies below T * sigmoid(1 - 0.674)
    assert abs(float(t.float().median()) - 1000 / (1 + math.exp(-1))) < 15
    assert abs(float((t < 1000 / (1 + math.exp(-(1 - 0.6745)))).float().mean()) - 0.25) < 0.03
    assert unet_timesteps(TrainConfig(unet_t_mean=None), g, 8) is None


def test_comprehension_pool_keeps_only_a_share_of_lone_objects(tmp_path):
    def pool(keep):
        cfg = TrainConfig.quick_run(work=str(tmp_path / str(keep)), cache_size=2, comprehension_pool=40, story_pool=1,
                                    comprehension_keep_single=keep)
        tr = Trainer(cfg, fresh=True, progress=False)
        tr.build_cache()
        return [sm for sm, _, _ in tr.cache["comprehension"]]

    def lone(p):
        return [sm.seed for sm in p if len(sm.scene.objects) == 1]

    every, thinned = pool(1.0), pool(0.35)
    assert len(every) == len(thinned) == 40
    assert len(lone(thinned)) < len(lone(every)) - 4
    # only lone objects are left out: every scene with company among the first 40 is still there, in order
    company = [sm.seed for sm in every if len(sm.scene.objects) > 1]
    assert [s for s in (sm.seed for sm in thinned) if s in set(company)] == company
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=rf"comprehension_keep_single must be in \(0, 1\], got {bad}"):
            TrainConfig(comprehension_keep_single=bad)
    for bad in (0, 2.5, None):
        with pytest.raises(ValueError, match=rf"comprehension_batch must be an int >= 1, got {bad!r}"):
            TrainConfig(comprehension_batch=bad)


def test_comprehension_batches_hold_pictures_of_one_view_count(tmp_path):
    from collections import Counter

    from seedx_lab.training.data import _seed_of
    cfg = TrainConfig.quick_run(work=str(tmp_path / "w"), cache_size=2, comprehension_pool=60, story_pool=1,
                                comprehension_buckets=True)
    tr = Trainer(cfg, fresh=True, progress=False)
    tr.build_cache()
    views = [int(f.shape[0]) for _, f, _ in tr.cache["comprehension"]]
    assert len(set(views)) >= 3                                  # the pool mixes aspect ratios

    def batch(step, n=6):
        return [views[tr._comprehension_index(step, _seed_of(cfg, "llm", step, i))] for i in range(n)]

    drawn = Counter()
    for step in range(300):
        b = batch(step)
        assert len(set(b)) == 1, (step, b)
        drawn[b[0]] += 1
    for v in set(views):                                       # buckets come up in proportion to their size
        assert abs(drawn[v] / 300 - views.count(v) / len(views)) < 0.1, (v, drawn)
    tr.cfg.comprehension_buckets = False                       # the plain draw mixes view counts in a batch
    assert sum(len(set(batch(step))) > 1 for step in range(50)) > 30


def test_story_steps_draw_text_only_samples_at_the_configured_rate(tmp_path):
    cfg = TrainConfig.quick_run(work=str(tmp_path / "w"), cache_size=2, comprehension_pool=2, story_pool=8)
    tr = Trainer(cfg, fresh=True, progress=False)
    tr.build_cache()
    boi = tr.model.token_ids.boi

    def text_only_share(rate, steps=40, n=8):
        tr.cfg.story_text_only = rate
        seqs = [e[0] for step in range(steps) for e in tr.llm_examples("story", step, n)]
        return sum(boi not in ids for ids in seqs) / len(seqs)

    assert text_only_share(0.0) == 0.0                           # every story of the pool holds an image
    assert text_only_share(1.0) == 1.0
    for rate in (0.3, 0.6):
        assert abs(text_only_share(rate) - rate) < 0.08
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=rf"story_text_only must be in \[0, 1\], got {bad}"):
            TrainConfig(story_text_only=bad)


def test_the_threads_of_a_run_hold_for_the_run_only(monkeypatch, tmp_path):
    """``TrainConfig.threads`` is the thread count while the trainer works; afterwards the calling process (a
    notebook's kernel, a test worker) has its own count back, also when the run fails."""
    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    seen = []
    monkeypatch.setattr(Trainer, "_run", lambda self: seen.append(torch.get_num_threads()) or tmp_path)
    tr = Trainer(_lane_config(tmp_path, "t", threads=want, parallel=False), fresh=True, progress=False)
    assert torch.get_num_threads() == want
    assert tr.run() == tmp_path and seen == [want] and torch.get_num_threads() == before

    def fail(self):
        raise RuntimeError("stage failed")
    monkeypatch.setattr(Trainer, "_run", fail)
    with pytest.raises(RuntimeError, match="stage failed"):
        Trainer(_lane_config(tmp_path, "t", threads=want, parallel=False), fresh=True, progress=False).run()
    assert torch.get_num_threads() == before
