"""Three-stage training of seedx-tiny (ViT, de-tokenizer, LLM with both resamplers).

``build_model(seed)`` gives an untrained seedx-tiny: the stand-in that tests and benchmarks use.
"""
from .trainer import TrainConfig, Trainer, build_model, read_log, train

__all__ = ["TrainConfig", "Trainer", "build_model", "read_log", "train"]
