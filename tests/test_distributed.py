"""Training through accelerate: N data-parallel processes follow one process's run."""
import socket
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from seedx_lab import cli
from seedx_lab.training.distributed import Shard
from seedx_lab.training.trainer import TrainConfig, Trainer, read_log

# a few steps of every stage; batches even so that two processes share them; the mix has all three tasks,
# so the LM loss (ragged label counts) and the feature regression (images in some rows only) are both shared
SETTINGS = dict(vit_steps=2, vae_steps=2, unet_steps=2, llm_steps=6, cache_size=8, comprehension_pool=4,
                story_pool=4, vit_batch=4, vae_batch=4, unet_batch=4, llm_batch=4, comprehension_batch=4,
                log_every=1, story_text_only=0.5, llm_mix=["caption", "comprehension", "story"])


def _fake(rank, world, counts=None):
    """A stand-in accelerator: ``reduce`` sums ``counts`` (every process's count) or averages."""
    def reduce(t, op):
        return torch.tensor(float(sum(counts))) if op == "sum" else t
    return SimpleNamespace(process_index=rank, num_processes=world, reduce=reduce)


def test_each_process_takes_an_equal_block_of_the_global_batch():
    blocks = [Shard(_fake(r, 3)).rows(12) for r in range(3)]
    assert [list(range(12))[b] for b in blocks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert Shard().rows(5) == slice(0, 5) and Shard().main
    with pytest.raises(ValueError, match=r"vit_batch \(10\) must be a multiple of the number of processes \(3\)"):
        Shard(_fake(0, 3)).rows(10, "vit_batch")


def test_shares_of_ragged_means_average_to_the_global_mean():
    """Token losses of 3 + 5 + 0 items in three processes: DDP averages the shares; that is the mean over
    all 8 items, not the mean of the processes' means."""
    losses = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([10.0, 10.0, 10.0, 10.0, 20.0]), torch.tensor([])]
    counts = [len(x) for x in losses]
    shares = [Shard(_fake(r, 3, counts)).mean(x.mean() if len(x) else torch.tensor(0.0), len(x))
              for r, x in enumerate(losses)]
    global_mean = torch.cat(losses).mean()
    assert torch.isclose(sum(shares) / 3, global_mean)
    assert not torch.isclose(sum(x.mean() for x in losses[:2]) / 2, global_mean)     # what naive averaging gives
    assert float(shares[2]) == 0.0
    one = torch.tensor(4.5)
    assert Shard().mean(one, 7) is one                                              # one process: untouched


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _set_args(settings):
    import json
    return [a for k, v in settings.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def test_two_processes_on_gloo_train_what_one_process_trains(tmp_path):
    """``accelerate launch`` of the real command line with two CPU processes, against one process on the same
    global batches: the same weights to 1e-5, the same logged losses."""
    one = Trainer(TrainConfig.quick_run(work=str(tmp_path / "w1"), out=str(tmp_path / "one"), threads=1,
                                        parallel=False, **SETTINGS), fresh=True, progress=False).run()
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()),
           "-m", "seedx_lab.cli", "train", "--quick", "--fresh", "--no-progress", "--threads", "1",
           "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "two"), *_set_args(SETTINGS)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "2 processes of 1 threads" in run.stdout            # it did run data parallel, and said so once
    assert len([line for line in run.stdout.splitlines() if line.startswith("saved ")]) == 1

    a, b = load_file(one / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    assert a.keys() == b.keys()
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 1e-5, worst
    # every stage moved its weights, so the agreement is not two untouched copies
    init = Trainer(TrainConfig.quick_run(work=str(tmp_path / "w0"), out=str(tmp_path / "zero"), **SETTINGS),
                   fresh=True, progress=False).model.state_dict()
    for key in ("vit.attn_pool.attn.in_proj_weight", "detok.vae.decoder.conv_out.weight", "detok.unet.conv_out.weight",
                "lvlm.llm.model.embed_tokens.weight", "lvlm.output_resampler.attn.in_proj_bias"):
        assert not torch.equal(a[key], init[key].to(a[key].dtype)), key

    rows1, rows2 = (read_log(tmp_path / w / "train_log.csv") for w in ("w1", "w2"))
    assert [(r["stage"], r["step"]) for r in rows1] == [(r["stage"], r["step"]) for r in rows2]
    for r1, r2 in zip(rows1, rows2):
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-4, abs=1e-5), (r1, r2)


def test_set_passes_config_fields_and_refuses_others(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr("seedx_lab.training.trainer.train", lambda cfg, fresh, progress: seen.setdefault("cfg", cfg))
    assert cli.main(["train", "--quick", "--out", str(tmp_path / "o"), "--set", "llm_steps=7",
                     "--set", "llm_mix=[\"caption\", \"story\"]", "--set", "unet_lr=null"]) == 0
    cfg = seen["cfg"]
    assert (cfg.llm_steps, cfg.llm_mix, cfg.unet_lr, cfg.vit_steps) == (7, ("caption", "story"), None,
                                                                        TrainConfig.quick_run().vit_steps)
    for args, message in ((["--set", "llm_step=7"], "'llm_step' is not a setting"),
                          (["--set", "seed=3"], "it has its own option --seed"),
                          (["--set", "llm_steps"], "--set takes NAME=VALUE"),
                          (["--set", "vit_batch=0"], "vit_batch must be an int >= 1, got 0"),
                          (["--set", "lr=fast"], "lr must be a positive number, got 'fast'")):
        with pytest.raises(ValueError, match=message):
            cli._cmd_train(cli.build_parser().parse_args(["train", "--quick", *args]))
