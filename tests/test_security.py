"""Nothing read from a file runs as code: crafted training states and tokenizer folders are refused,
naming the file, and the code they carry never runs (its marker file never appears)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from seedx_lab import tokens as T
from seedx_lab.loading import DATA_DIR, load
from seedx_lab.published.checkpoints import load_published_tokenizer
from seedx_lab.training import TrainConfig
from seedx_lab.training import trainer as TR

TINY = DATA_DIR / "seedx-tiny"


class _Payload:
    """Unpickling this opens (so creates) ``marker``: the stand-in for any code a pickle can run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _crafted_state(path: Path, marker: Path) -> None:
    torch.save(dict(config={}, done=[], stage=None, step=0, model={"x": _Payload(marker)}, opt=None,
                    scaling_factor=1.0), path)


def test_the_crafted_state_does_run_code_when_unpickled(tmp_path):
    """The payload is live (so the refusal below means something): a plain unpickling creates the marker."""
    f, marker = tmp_path / "state.pt", tmp_path / "ran"
    _crafted_state(f, marker)
    torch.load(f, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("name", ["state.pt", "state-llm.pt"])
def test_a_crafted_training_state_is_refused_without_running(tmp_path, name):
    work, marker = tmp_path / "work", tmp_path / "ran"
    work.mkdir()
    _crafted_state(work / name, marker)
    cfg = TrainConfig.quick_run(work=str(work), out=str(tmp_path / "m"), parallel=False)
    lane = None if name == "state.pt" else "llm"
    with pytest.raises(ValueError, match=rf"cannot resume from .*{name}.*--fresh"):
        TR.Trainer(cfg, progress=False, lane=lane)
    assert not marker.exists()


def _tokenizer_folder(tmp_path: Path, marker: Path, py: bool = True, where: str = "tokenizer_config.json") -> Path:
    d = tmp_path / "tok"
    d.mkdir()
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TINY / f, d / f)
    cfg = json.loads((d / where).read_text()) if (d / where).exists() else {}
    cfg["auto_map"] = {"AutoTokenizer": ["evil.EvilTokenizer", None]}
    (d / where).write_text(json.dumps(cfg))
    if py:
        (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                   "from transformers import PreTrainedTokenizerFast as EvilTokenizer\n")
    return d


@pytest.mark.parametrize("loader", ["seedx", "published"])
def test_a_tokenizer_folder_with_code_is_refused_naming_the_file(tmp_path, loader):
    marker = tmp_path / "ran"
    d = _tokenizer_folder(tmp_path, marker)
    load_fn = T.load_tokenizer if loader == "seedx" else load_published_tokenizer
    with pytest.raises(ValueError, match=r"evil\.py.*refused"):
        load_fn(d)
    assert not marker.exists()
    (d / "evil.py").unlink()                                     # auto_map alone is refused too
    with pytest.raises(ValueError, match=r"tokenizer_config\.json has an 'auto_map'"):
        load_fn(d)
    assert not marker.exists()


def test_auto_map_in_config_json_is_refused(tmp_path):
    d = _tokenizer_folder(tmp_path, tmp_path / "ran", py=False, where="config.json")
    with pytest.raises(ValueError, match=r"config\.json has an 'auto_map'"):
        load_published_tokenizer(d)


def test_load_refuses_a_model_folder_whose_tokenizer_carries_code(tmp_path):
    d, marker = tmp_path / "model", tmp_path / "ran"
    shutil.copytree(TINY, d)
    (d / "tokenization_evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    with pytest.raises(ValueError, match=r"tokenization_evil\.py"):
        load(d)
    assert not marker.exists()


def test_the_clean_tokenizer_still_loads():
    tok = T.load_tokenizer(TINY)
    assert T.ImageTokenIds.from_tokenizer(tok).boi == tok.convert_tokens_to_ids(T.BOI_TOKEN)
