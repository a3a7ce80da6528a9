"""Evaluation: top-1/top-5 metrics, centre and ten-view tests, ensembles, predictions."""

from .evaluate import evaluate
from .metrics import ClassificationMeter, topk_correct
from .predict import predict

__all__ = ["evaluate", "predict", "ClassificationMeter", "topk_correct"]
