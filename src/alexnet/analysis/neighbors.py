"""Figure 4 (right): exact k-nearest-neighbour retrieval in fc7 space, streaming.

The paper (section 6.1): "If two images produce feature activation vectors with a
small Euclidean separation, we can say that the higher levels of the neural network
consider them to be similar. Figure 4 shows five images from the test set and the
six images from the training set that are most similar to each of them according to
this measure." (It also suggests auto-encoding the 4096-d vectors to short binary
codes for efficiency; we search exactly instead.)

:func:`knn_search` is exhaustive (every database vector is compared with every
query, nothing approximate) and streams the database in chunks of ``chunk_size``
rows, so memory does not grow with the database: 1.2 million x 4096 float32
features (19.7 GB as a memory-mapped ``.npy``) are searched with at most

    chunk_size x D x 8 bytes         (the chunk, converted to float64)
  + Q x (chunk_size + k) x 16 bytes  (distances + indices of the candidates, float64/int64)
  + Q x D x 8 bytes                  (the queries)

resident at once - 134 MB for the default chunk of 4096 rows at D = 4096, plus
~0.5 MB per query - on whatever device the queries live on (the memory-mapped file
itself is paged in and out by the OS). Distances are computed in float64 so that
the ranking agrees with a brute-force float64 computation; ties are broken by the
smaller database index (stable sort).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from ..console import progress as progress_bar
from ..errors import UserError
from ..files import atomic_write
from ..report import save_figure, write_csv
from ..runtime import default_device
from .features import embed_batches, load_features, load_query_images, open_model_and_data

METRICS = ("euclidean", "cosine")
DEFAULT_CHUNK = 4096


def memory_bound_bytes(chunk_size: int, dim: int, queries: int, k: int) -> int:
    """The resident-memory bound stated in the module docstring, in bytes."""
    return chunk_size * dim * 8 + queries * (chunk_size + k) * 16 + queries * dim * 8


def iter_chunks(database, chunk_size: int) -> Iterator[tuple[int, np.ndarray]]:
    """(start row, rows) of an (N, D) array or memmap, ``chunk_size`` rows at a time."""
    n = len(database)
    for start in range(0, n, chunk_size):
        yield start, database[start:start + chunk_size]


def knn_search(queries, database, k: int = 6, metric: str = "euclidean", chunk_size: int = DEFAULT_CHUNK,
               device: str | torch.device | None = None, chunks: Iterable[tuple[int, np.ndarray]] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest database rows of every query: (distances (Q, k) float64, indices (Q, k) int64).

    ``database`` is an (N, D) array (a ``np.load(..., mmap_mode="r")`` memmap is read
    chunk by chunk); alternatively pass ``chunks``, an iterable of (start row, rows).
    Euclidean distances are true (not squared) distances; cosine distance is
    1 - cosine similarity. Fewer than k database rows -> all of them.
    """
    if metric not in METRICS:
        raise UserError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    if k < 1:
        raise UserError(f"-k {k}: must be at least 1")
    if chunk_size < 1:
        raise UserError(f"chunk size {chunk_size}: must be at least 1")
    q = torch.as_tensor(np.asarray(queries), dtype=torch.float64)
    if device is not None:
        q = q.to(device)
    device = q.device
    if q.ndim != 2:
        raise UserError(f"queries must be (Q, D), got shape {tuple(q.shape)}")
    if metric == "cosine":
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
    q_sq = (q * q).sum(dim=1, keepdim=True)
    best_d = torch.empty((len(q), 0), dtype=torch.float64, device=device)
    best_i = torch.empty((len(q), 0), dtype=torch.int64, device=device)
    for start, rows in (chunks if chunks is not None else iter_chunks(database, chunk_size)):
        x = torch.as_tensor(np.asarray(rows, dtype=np.float64), device=device)
        if x.ndim != 2 or x.shape[1] != q.shape[1]:
            raise UserError(f"database rows have shape {tuple(x.shape)[1:]}, queries have {q.shape[1]} dimensions")
        if metric == "cosine":
            x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
            d = 1.0 - q @ x.T
        else:
            # |q - x|^2 = |q|^2 - 2 q.x + |x|^2 (one matrix product per chunk); clamp the
            # tiny negative values rounding can produce for identical vectors.
            d = (q_sq - 2.0 * (q @ x.T) + (x * x).sum(dim=1)[None, :]).clamp_min_(0.0)
        index = torch.arange(start, start + len(x), device=device).expand(len(q), -1)
        # Previous best first, then this chunk (higher indices): a stable sort keeps
        # the smaller index first on ties, exactly like a stable argsort of all rows.
        cand_d = torch.cat([best_d, d], dim=1)
        cand_i = torch.cat([best_i, index], dim=1)
        order = torch.sort(cand_d, dim=1, stable=True).indices[:, :k]
        best_d = cand_d.gather(1, order)
        best_i = cand_i.gather(1, order)
    if metric == "euclidean":
        best_d = best_d.sqrt()
    return best_d.cpu().numpy(), best_i.cpu().numpy()


def brute_force_knn(queries, database, k: int = 6, metric: str = "euclidean") -> tuple[np.ndarray, np.ndarray]:
    """Reference: all pairwise distances at once in float64 numpy (small inputs only)."""
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(database, dtype=np.float64)
    if metric == "cosine":
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        d = 1.0 - q @ x.T
    else:
        d = np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2))
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


# ----------------------------------------------------------------------------- the figure and the table

def neighbors_figure(checkpoint, cache_path, query_paths: list[str], out_png, *, k: int = 6,
                     metric: str = "euclidean", features: str | None = None, split: str = "train",
                     chunk_size: int = DEFAULT_CHUNK, batch_size: int = 256, device: str | None = None,
                     table: str | None = None, progress: bool = False) -> dict:
    """Figure 4 (right): each query image and its k nearest ``split`` images in fc7 space.

    Writes ``out_png`` (one row per query: the query, then its neighbours with class
    and distance), ``table`` (CSV; default: ``out_png`` with ``.csv``) and the same
    table as Markdown (``.md``). Database features come from ``features`` (made by
    ``alexnet features``) or are computed on the fly, ``chunk_size`` images at a time,
    and searched as they come (not saved; the same memory bound).
    """
    if not query_paths:
        raise UserError("--query: give at least one image file")
    device = default_device(device)
    model, info, spec, cache_path, cache = open_model_and_data(checkpoint, cache_path, device, progress)
    sp = cache.split(split)
    query_images = load_query_images(query_paths, spec)
    q = embed_batches(model, spec, np.stack(query_images), batch_size, device)
    if features:
        db = load_features(features, split=split, count=len(sp), checkpoint=info["path"])
        dist, idx = knn_search(q, db, k=k, metric=metric, chunk_size=chunk_size, device=device)
    else:
        # Features computed chunk by chunk and searched at once: memory stays bounded here too.
        bar = progress_bar(len(sp), f"fc7 {split}", "img", disable=not progress)

        def feature_chunks():
            for start in range(0, len(sp), chunk_size):
                block = sp.images[start:start + chunk_size]
                yield start, embed_batches(model, spec, block, batch_size, device)
                bar.update(len(block))

        try:
            dist, idx = knn_search(q, None, k=k, metric=metric, chunk_size=chunk_size, device=device,
                                   chunks=feature_chunks())
        finally:
            bar.close()

    names = cache.class_names if len(cache.class_names) == cache.num_classes else cache.classes
    try:
        files = sp.files
    except OSError:
        files = [""] * len(sp)
    rows = []
    for qi, path in enumerate(query_paths):
        for rank in range(idx.shape[1]):
            j = int(idx[qi, rank])
            rows.append({"query": str(path), "rank": rank + 1, "index": j, "file": files[j] if j < len(files) else "",
                         "class": names[int(sp.labels[j])], "distance": float(dist[qi, rank]), "metric": metric})
    out_png = Path(out_png)
    table = Path(table) if table else out_png.with_suffix(".csv")
    try:
        write_csv(table, rows)
        atomic_write(table.with_suffix(".md"), neighbors_markdown(rows), what="the neighbour table")
        plot_neighbors(query_images, query_paths, [sp.images[int(j)] for j in idx.ravel()], rows, k=idx.shape[1],
                       out=out_png, metric=metric)
    except OSError as exc:
        raise UserError(f"{exc.filename or out_png}: cannot write ({exc.strerror or exc})") from None
    return {"png": str(out_png), "csv": str(table), "md": str(table.with_suffix(".md")), "rows": rows,
            "memory_bound_bytes": memory_bound_bytes(chunk_size, q.shape[1], len(q), k)}


def neighbors_markdown(rows: list[dict]) -> str:
    lines = ["| query | rank | index | class | distance | file |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['query']} | {r['rank']} | {r['index']} | {r['class']} | {r['distance']:.4f} | {r['file']} |")
    return "\n".join(lines) + "\n"


def plot_neighbors(query_images, query_paths, neighbour_images, rows, *, k: int, out, metric: str) -> None:
    import matplotlib   # lazy: ~0.5 s of start-up that only the figure needs
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nq = len(query_images)
    fig, axes = plt.subplots(nq, k + 1, figsize=(1.6 * (k + 1), 2.1 * nq), squeeze=False)

    def show(ax, img, title, colour="black"):
        img = np.asarray(img)
        ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
                  vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=7, color=colour)
        ax.set_xticks([])
        ax.set_yticks([])

    for qi in range(nq):
        show(axes[qi, 0], query_images[qi], f"query\n{Path(str(query_paths[qi])).name[:18]}", "tab:blue")
        for r in range(k):
            row = rows[qi * k + r]
            show(axes[qi, r + 1], neighbour_images[qi * k + r], f"{row['class'][:16]}\n{row['distance']:.3g}")
    fig.suptitle(f"fc7 nearest training images ({metric} distance)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, out, dpi=100)
