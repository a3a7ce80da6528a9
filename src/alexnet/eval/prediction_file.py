"""Per-image predictions written to a file: what ``alexnet eval -o FILE`` writes, for a
labelled split and for one without labels (the ILSVRC-2012 test set).

* ``.csv``: one row per image in the split's order, ``file`` (the source name), ``label``
  (empty when the split has none), then ``class_k``, ``name_k``, ``probability_k`` for the
  top k = 1..5;
* ``.txt``: the ILSVRC-2012 devkit's submission format (its readme, "Submission format"):
  one line per image in the sorted order of the file names, up to five ILSVRC2012_IDs
  (the devkit's own 1-based class numbers, from the cache's ``meta.json``) by descending
  confidence, separated by spaces. Only for caches prepared with the devkit.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import torch

from ..errors import UserError
from ..files import atomic_write
from ..options import output_file

TOP = 5


def check_prediction_path(path, cache) -> Path:
    """The file ``-o`` names, checked before any work: a known suffix, a place it can be written
    (its missing folders made), and for ``.txt`` a cache that knows the devkit's IDs."""
    path = Path(path)
    if path.suffix.lower() not in (".csv", ".txt"):
        raise UserError(f"-o {path}: write predictions to a .csv file (or .txt, the ILSVRC devkit's submission format)")
    if path.suffix.lower() == ".txt" and not cache.meta.get("ilsvrc2012_ids"):
        raise UserError(f"-o {path}: the devkit's submission format needs the devkit's class IDs, and {cache.path} "
                        f"was not prepared with the ILSVRC-2012 devkit; write a .csv instead")
    return output_file(path)


def write_predictions(path, probs: torch.Tensor, labels: torch.Tensor | None, files: list[str], cache) -> Path:
    """Write the predictions (N, C) of the images ``files`` (labels: None or -1 where unknown)."""
    path = Path(path)
    k = min(TOP, probs.shape[1])
    values, indices = probs.topk(k, dim=1)
    buf = io.StringIO()
    if path.suffix.lower() == ".txt":
        ids = cache.meta["ilsvrc2012_ids"]
        for row in indices.tolist():
            buf.write(" ".join(str(ids[i]) for i in row) + "\n")
    else:
        writer = csv.writer(buf)
        writer.writerow(["file", "label"] + [f"{c}_{j}" for j in range(1, k + 1) for c in ("class", "name", "probability")])
        for n, (row, vals) in enumerate(zip(indices.tolist(), values.tolist(), strict=True)):
            label = "" if labels is None or int(labels[n]) < 0 else cache.classes[int(labels[n])]
            top = [x for i, v in zip(row, vals, strict=True) for x in (cache.classes[i], cache.class_names[i], f"{v:.6f}")]
            writer.writerow([files[n], label] + top)
    return atomic_write(path, buf.getvalue(), what="prediction file")
