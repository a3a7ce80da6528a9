"""The device data path: whole uint8 squares to the device, the paper's augmentation there.

    path = choose_data_path("cuda:0", cache.storage, torchvision_available())   # "device-nvjpeg", ...
    loader = DeviceLoader(cache, "train", data_path=path, batch_size=256, train=True, ...)

The host path (:mod:`alexnet.data.loader`) cuts the crops on the CPU and sends uint8
crops; that is the fastest way on a CPU, but at tens of thousands of images per second
one CPU core per few hundred images (JPEG decoding, cropping) cannot keep a GPU fed.
Here the host only gathers each batch's rows (one ``index_select`` from the memory-mapped
raw cache straight into pinned memory, or the JPEG bytes of the compact cache) and the
device does the rest, for the whole batch at once:

1. *decode* (compact JPEG cache only): nvJPEG through ``torchvision.io.decode_jpeg(list,
   device="cuda")`` when torchvision is importable; otherwise simplejpeg on the host (in the
   loader's worker processes), as the host path does;
2. *copy*: pinned host memory -> device with ``non_blocking=True`` (the copy overlaps compute);
3. *augment*: crops and mirrors (:func:`alexnet.data.augment.gather_crops`, one gather),
   then the host path's own :class:`alexnet.data.preprocess.InputTransform`: the mean
   image cut at the same offsets, the PCA colour offsets of Krizhevsky et al. (2012,
   section 4.1), the input scale, the float conversion and the layout.

Same random choices as the host path: the shuffle, crop offsets, flips and colour noise
are :func:`alexnet.data.loader.draw_batch`'s, the one function both paths call, and the
arithmetic is the same object's, so with the same cache and seed this path gives
*identical* tensors to the host path on a CPU (``tests/test_device_pipeline.py`` checks
it with ``torch.equal`` for every input setting). On CUDA the uint8 gathers and the
float32 subtractions, additions and multiplications are exact too; only nvJPEG's decoding
may differ from libjpeg-turbo's by a level here and there (the device check measures it).

Which path runs: ``data.path`` ("auto": the host path on a CPU, this one on CUDA; "host";
"device": this one on any device, the CPU included), resolved by :func:`choose_data_path`.

Prefetching: a background thread runs the host stage and the device stage (on its own
CUDA stream) ``prefetch`` batches ahead of the training step, so the step only waits for
data when the data path is slower than the step; :attr:`DeviceLoader.wait_s` says how
long it waited in the last pass.
"""

from __future__ import annotations

import contextlib
import importlib.util
import queue
import threading
import time
import warnings
from functools import lru_cache

import numpy as np
import torch

from ..errors import UserError
from . import augment
from .cache import JpegImages, storage_rows
from .loader import BatchPlan, BatchReader, Draw, Loader

DATA_PATHS = {
    "host": "crops cut on the host, uint8 crops to the device",
    "device": "uint8 squares to the device (pinned, non-blocking); crops, flips, colour noise and mean there",
    "device-nvjpeg": "JPEG bytes to the GPU, decoded there by nvJPEG; crops, flips, colour noise and mean there",
    "device-cpu-decode": "JPEGs decoded on the host, uint8 squares to the device; augmentation there",
}


@lru_cache(maxsize=1)
def torchvision_available() -> bool:
    """Whether ``torchvision.io.decode_jpeg`` can be imported (torchvision is optional)."""
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        from torchvision.io import decode_jpeg  # noqa: F401  (lazy: optional, and slow to import)
    except Exception:  # noqa: BLE001 - a torchvision built for another torch fails in many ways
        return False
    return True


PATH_SETTINGS = ("auto", "host", "device")      # the values of data.path


def choose_data_path(device, storage: str, torchvision_available: bool, setting: str = "auto") -> str:
    """The data path (a key of :data:`DATA_PATHS`) a loader on ``device`` over a ``storage``
    ("raw" / "jpeg") cache takes for the ``data.path`` ``setting``.

    "auto": "host" on anything but CUDA (on a CPU, cutting crops from the memory map is the
    fastest way), the device path on CUDA. "host" and "device" force one on any device. The
    device path is "device" for a raw cache; for a JPEG cache "device-nvjpeg" on CUDA when
    torchvision is importable, else "device-cpu-decode". Any other key of :data:`DATA_PATHS`
    is taken as it is.
    """
    if storage not in ("raw", "jpeg"):
        raise UserError(f"cache storage {storage!r}: expected 'raw' or 'jpeg'")
    if setting not in PATH_SETTINGS:
        if setting in DATA_PATHS:
            return setting
        raise UserError(f"data.path {setting!r}: choose one of {', '.join(PATH_SETTINGS)}")
    cuda = torch.device(device).type == "cuda"
    if setting == "host" or (setting == "auto" and not cuda):
        return "host"
    if storage == "raw":
        return "device"
    return "device-nvjpeg" if cuda and torchvision_available else "device-cpu-decode"


def describe_data_path(path: str) -> str:
    """``"device-nvjpeg (JPEG bytes to the GPU, ...)"``: what the run's first line shows."""
    return f"{path} ({DATA_PATHS[path]})"


class SquareReader(BatchReader):
    """Host stage of the device path: batch key -> whole uint8 squares (or JPEG bytes), labels, draw.

    The draw is :func:`alexnet.data.loader.draw_batch`'s, as on the host path.
    """

    def __init__(self, cache_path: str, split: str, plan: BatchPlan, jpeg_bytes: bool):
        super().__init__(cache_path, split, plan)
        self.jpeg_bytes = jpeg_bytes
        self.pin = False          # True when it runs in the loader's own process (workers=0): workers may not pin
        self._tensor_view = (None, None)

    def __getstate__(self):
        state = super().__getstate__()
        state["_tensor_view"] = (None, None)
        return state

    def read(self, draw: Draw):
        base, rows = storage_rows(self.data().images, draw.rows)
        if self.jpeg_bytes:
            return [torch.from_numpy(np.array(blob)) for blob in base.encoded(rows)]
        return self._squares(base, rows)

    def _squares(self, base, rows: np.ndarray) -> torch.Tensor:
        """uint8 (n, S, S, C) of storage rows ``rows``, in pinned memory when ``self.pin``."""
        shape = (len(rows),) + tuple(base.shape[1:])
        out = torch.empty(shape, dtype=torch.uint8, pin_memory=self.pin)
        if isinstance(base, JpegImages):
            target = out.numpy()
            for j, i in enumerate(rows):   # per-image decode is inherent to the compact format
                base.decode_one(int(i), target[j])
            return out
        if self._tensor_view[0] is not base:
            with warnings.catch_warnings():   # the memmap is read-only, and only ever read here
                warnings.simplefilter("ignore", UserWarning)
                self._tensor_view = (base, torch.from_numpy(np.asarray(base)))
        # One multi-threaded copy from the page cache straight into (pinned) memory.
        torch.index_select(self._tensor_view[1], 0, torch.from_numpy(rows), out=out)
        return out


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


_DONE = object()


class DeviceLoader(Loader):
    """:class:`alexnet.data.loader.Loader` with the device data path (see the module doc).

    Same arguments as the host loader plus ``data_path`` (a key of :data:`DATA_PATHS`
    other than "host"). ``prefetch`` = batches prepared ahead by the background thread
    (0: none, everything in the caller's thread).
    """

    def __init__(self, cache, split: str, *, data_path: str, **kwargs):
        if data_path not in DATA_PATHS or data_path == "host":
            raise UserError(f"data path {data_path!r}: choose one of {', '.join(p for p in DATA_PATHS if p != 'host')}")
        if data_path == "device-nvjpeg" and cache.storage != "jpeg":
            raise UserError(f"{cache.path}: data path 'device-nvjpeg' needs a JPEG cache (this one stores {cache.storage})")
        if data_path == "device-nvjpeg" and not torchvision_available():
            raise UserError("data path 'device-nvjpeg' needs torchvision (pip install torchvision), "
                            "or use 'device-cpu-decode'")
        self.data_path = data_path
        super().__init__(cache, split, **kwargs)
        self.reader.pin = self.workers == 0 and self.pin_memory
        self.wait_s = 0.0          # seconds the consumer waited for data in the current / last pass
        self._stream = None

    def _make_reader(self) -> SquareReader:
        return SquareReader(self.cache.path, self.split_name, self.plan, jpeg_bytes=self.data_path == "device-nvjpeg")

    @property
    def description(self) -> str:
        return describe_data_path(self.data_path)

    # -- the device stage ----------------------------------------------------------------------
    def _decode_on_device(self, blobs: list[torch.Tensor]) -> torch.Tensor:
        from torchvision.io import ImageReadMode, decode_jpeg   # lazy: optional, and slow to import
        mode = ImageReadMode.GRAY if self.cache.channels == 1 else ImageReadMode.RGB
        images = decode_jpeg(blobs, mode=mode, device=self.device)
        size = self.cache.size
        for i, im in enumerate(images):
            if tuple(im.shape) != (self.cache.channels, size, size):
                raise UserError(f"{self.cache.path}: JPEG {i} of the batch decodes to {tuple(im.shape)}, "
                                f"expected ({self.cache.channels}, {size}, {size}); the cache is damaged")
        return torch.stack(images).permute(0, 2, 3, 1)      # NHWC view of the decoded NCHW batch

    def _device_stage(self, payload, labels: torch.Tensor, draw: Draw):
        """Whole squares (or JPEG bytes) -> (x, labels, dataset rows) on the device."""
        non_blocking = self.pin_memory
        if self.data_path == "device-nvjpeg":
            images = self._decode_on_device(payload)
        else:
            if self.pin_memory and not payload.is_pinned():
                payload = payload.pin_memory()
            images = payload.to(self.device, non_blocking=non_blocking)
        labels = labels.to(self.device, non_blocking=non_blocking)
        where = [t.to(self.device, non_blocking=non_blocking) for t in (draw.top, draw.left, draw.flips)]
        source = None if draw.source is None else draw.source.to(self.device, non_blocking=non_blocking)
        crops = augment.gather_crops(images, *where, self.crop, source=source).permute(0, 3, 1, 2)
        x = self.transform(crops, draw.top, draw.left, draw.flips, draw.alpha)
        return x, labels, torch.from_numpy(draw.rows)

    # -- iteration -------------------------------------------------------------------------------
    def _batches(self):
        for batch in self._host_batches():
            yield self._device_stage(*batch)

    def __iter__(self):
        self.wait_s = 0.0
        items = self._prefetched() if self.prefetch > 0 else self._batches()
        for x, labels, idx in items:
            yield (x, labels, idx) if self.with_index else (x, labels)

    def _prefetched(self):
        cuda = self.device.type == "cuda"
        if cuda and self._stream is None:
            self._stream = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device) if cuda else None
        # "cuda" without an index means the caller's current device; a new thread starts on device 0.
        index = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if cuda else None
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    ready.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def produce():
            try:
                if cuda:
                    torch.cuda.set_device(index)
                    self._stream.wait_stream(main)     # the mean image etc. were copied on the main stream
                with torch.cuda.stream(self._stream) if cuda else contextlib.nullcontext():
                    for batch in self._batches():
                        event = None
                        if cuda:
                            event = torch.cuda.Event()
                            event.record(self._stream)
                        if not put((batch, event)):
                            return
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                put(_Failure(exc))
                return
            put(_DONE)

        thread = threading.Thread(target=produce, name="alexnet-device-prefetch", daemon=True)
        thread.start()
        try:
            while True:
                start = time.perf_counter()
                item = ready.get()
                self.wait_s += time.perf_counter() - start
                if item is _DONE:
                    return
                if isinstance(item, _Failure):
                    raise item.exc
                (x, labels, idx), event = item
                if cuda:
                    main.wait_event(event)
                    # Made on the side stream, used on the main one: keep the allocator from
                    # handing their memory back to the side stream before the step is done.
                    x.record_stream(main)
                    labels.record_stream(main)
                yield x, labels, idx
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    ready.get(timeout=0.05)
                except queue.Empty:
                    pass
            thread.join()

