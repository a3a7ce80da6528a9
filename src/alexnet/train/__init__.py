"""Training: configuration, the loop (trainer), its resumable state, the run folder, schedules,
data- and model-parallel set-up."""

from .config import Config, load_config
from .trainer import TrainResult, train

__all__ = ["Config", "load_config", "train", "TrainResult"]
