"""``seedx-lab plan``: the published SEED-X built on the meta device, counted and placed."""
import re

import pytest
import torch

from seedx_lab.cli import main as cli_main
from seedx_lab.published import plan as P

GiB = 2 ** 30


@pytest.fixture(scope="module")
def stages():
    return P.build_stages()


@pytest.fixture(scope="module")
def plan(stages):
    return P.make_plan("bf16", stages=stages)


def test_everything_is_on_the_meta_device(stages):
    assert all(t.is_meta for m in stages.values() for t in list(m.parameters()) + list(m.buffers()))


def test_counts_are_the_sums_of_the_built_modules(stages, plan):
    for k, m in stages.items():
        assert plan.params[k] == sum(p.numel() for p in m.parameters()), k
    assert plan.total_params == sum(p.numel() for m in stages.values() for p in m.parameters())


def test_the_llm_is_llama2_13b_with_the_widened_vocabulary(plan):
    V, h, inter, layers = 32330, 5120, 13824, 40
    per_layer = 4 * h * h + 3 * h * inter + 2 * h          # q k v o, gate up down, two RMSNorms
    assert plan.params["llm"] == V * h + layers * per_layer + h + V * h    # embedding, layers, final norm, head
    assert plan.params["patch_pos_embed"] == 4 * h


def test_memory_is_bytes_per_element_times_elements(stages, plan):
    for k, m in stages.items():
        n = sum(t.numel() for t in list(m.parameters()) + list(m.buffers()))
        assert plan.memory["fp32"][k] == 4 * n, k
        assert plan.memory["bf16"][k] == 2 * n, k
    n_vae = sum(t.numel() for t in stages["vae"].parameters())
    assert plan.memory["fp16"]["vae"] == 4 * n_vae            # SDXL's VAE is upcast in float16


def test_kv_cache_formula(stages, plan):
    L = 5 * 66 + 128 + 65
    assert plan.activations["llm KV cache"] == 2 * 40 * L * 5120 * 2
    assert P.make_plan("fp32", stages=stages).activations["llm KV cache"] == 2 * plan.activations["llm KV cache"]


def test_device_map_places_or_refuses(stages):
    big = P.make_plan("bf16", gpus=1, gpu_memory="80GiB", stages=stages)
    assert big.fits and set(big.device_map.values()) == {0}
    small = P.make_plan("bf16", gpus=1, gpu_memory="24GiB", stages=stages)
    assert small.fits is False and small.not_fitting
    two = P.make_plan("bf16", gpus=2, gpu_memory="24GiB", stages=stages)
    assert two.fits and set(two.device_map.values()) == {0, 1}
    # nothing that accelerate may not split is split: a LLaMA layer stays whole
    assert not any(re.search(r"layers\.\d+\.", k) for k in two.device_map)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="dtype must be one of"):
        P.make_plan("int8")
    with pytest.raises(ValueError, match="gpus must be"):
        P.make_plan("bf16", gpus=-1)


def test_cli_prints_the_table(capsys):
    assert cli_main(["plan", "--dtype", "bf16", "--gpus", "1", "--gpu-memory", "24GiB"]) == 0
    out = capsys.readouterr().out
    row = re.search(r"^llm\s+([\d,]+)\s+([\d.]+)", out, re.M)
    assert row and int(row.group(1).replace(",", "")) == 32330 * 5120 * 2 + 40 * (4 * 5120 ** 2 + 3 * 5120 * 13824 + 2 * 5120) + 5120
    assert "does not fit" in out and "GPU 0" in out
