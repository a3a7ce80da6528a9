"""Classification metrics as integer counts, so that they add up exactly across batches and ranks,
and the evaluation of a model over a loader (centre crop or the paper's ten views).

The paper reports top-1 and top-5 error rates (section 1 and Table 1): "the fraction
of test images for which the correct label is not among the five labels considered
most probable by the model". A sample counts as top-k correct when its label is
among the k largest scores; ties are broken by ``torch.topk`` (index order on CPU).

Ten views (section 4.1): "averaging the predictions made by the network's softmax layer
on the ten patches": :func:`view_average` averages softmax probabilities, not logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..fastpath import FastPath


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[int, int]:
    """Number of rows whose label is among the k highest scores, for each k (k capped at #classes)."""
    kmax = min(max(ks), scores.shape[1])
    top = scores.topk(kmax, dim=1).indices
    hit = top.eq(labels.view(-1, 1))
    return {k: int(hit[:, : min(k, kmax)].any(dim=1).sum()) for k in ks}


def view_average(logits: torch.Tensor, views: int) -> torch.Tensor:
    """Softmax over classes, then the mean over each image's ``views`` consecutive rows: (B, C).

    The paper's ten-view test (section 4.1) and its ensembles (section 6) both average
    softmax probabilities, not logits.
    """
    probs = torch.softmax(logits.float(), dim=1)
    if views == 1:
        return probs
    return probs.view(-1, views, probs.shape[1]).mean(dim=1)


@dataclass
class ClassificationMeter:
    """Accumulates loss, top-1/top-5 hits and the confusion matrix over batches."""

    num_classes: int
    count: int = 0
    loss_sum: float = 0.0
    top1: int = 0
    top5: int = 0
    confusion: torch.Tensor = field(default=None)

    def __post_init__(self):
        if self.confusion is None:
            self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def update(self, scores: torch.Tensor, labels: torch.Tensor, loss_sum: float | None = None) -> None:
        scores = scores.detach().float().cpu()
        labels = labels.detach().cpu()
        hits = topk_correct(scores, labels)
        self.top1 += hits[1]
        self.top5 += hits[5]
        self.count += labels.numel()
        if loss_sum is not None:
            self.loss_sum += float(loss_sum)
        pred = scores.argmax(dim=1)
        self.confusion += torch.bincount(labels * self.num_classes + pred,
                                         minlength=self.num_classes ** 2).view(self.num_classes, -1)

    def all_reduce(self) -> "ClassificationMeter":
        """Sum the counts over every rank of the default process group (no-op when not distributed)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            flat = torch.tensor([self.count, self.top1, self.top5], dtype=torch.float64)
            flat = torch.cat([flat, torch.tensor([self.loss_sum], dtype=torch.float64),
                              self.confusion.view(-1).double()])
            dist.all_reduce(flat)
            self.count, self.top1, self.top5 = (int(v) for v in flat[:3].tolist())
            self.loss_sum = float(flat[3])
            self.confusion = flat[4:].round().long().view(self.num_classes, self.num_classes)
        return self

    def per_class_accuracy(self) -> list[float | None]:
        totals = self.confusion.sum(dim=1)
        return [None if int(t) == 0 else float(self.confusion[i, i]) / float(t) for i, t in enumerate(totals)]

    def result(self) -> dict:
        n = max(self.count, 1)
        return {"count": self.count, "loss": self.loss_sum / n if self.loss_sum else None,
                "top1_err": 1 - self.top1 / n, "top5_err": 1 - self.top5 / n}


@torch.no_grad()
def evaluate_loader(model: nn.Module, loader, num_classes: int, *, views: str = "center",
                    fast: FastPath | None = None) -> ClassificationMeter:
    """Top-1/top-5 counts and loss over ``loader`` (centre crop, or the paper's ten views averaged),
    summed over every rank. ``fast``: the fast path the model runs in (None = float32, contiguous,
    on the model's device). The loader already yields network input (its InputSpec)."""
    if fast is None:
        fast = FastPath(next(model.parameters()).device)
    meter = ClassificationMeter(num_classes)
    was_training = model.training
    model.eval()
    for x, y in loader:
        with fast.autocast():
            logits = model(fast.prepare_input(x))
        probs = view_average(logits.float(), 10 if views == "ten" else 1)
        loss_sum = float(F.nll_loss(torch.log(probs.clamp_min(1e-12)), y.to(probs.device), reduction="sum"))
        meter.update(probs, y, loss_sum)
    model.train(was_training)
    return meter.all_reduce()
