"""Training: configuration, the loop (trainer), its resumable state, the run folder, schedules,
data- and model-parallel set-up."""

from ..checkpoint import load_checkpoint, load_model, save_checkpoint
from .config import Config, load_config
from .trainer import TrainResult, train

__all__ = ["Config", "load_config", "train", "TrainResult", "save_checkpoint", "load_checkpoint", "load_model"]
