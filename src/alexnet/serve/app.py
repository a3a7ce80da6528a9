"""``alexnet serve``: a page to try a model on an image, and the JSON API behind it.

    app = create_app("runs/NAME")            # a Flask (WSGI) application
    serve("runs/NAME", host="127.0.0.1", port=8000)

What it answers (every answer that is not a page or a PNG is JSON; every error is a 4xx or,
for a bug of ours, a 500 with one line of JSON ``{"error": "..."}`` - never a traceback):

    GET  /             the page: choose or drop an image, see the top-5 with names and bars,
                       conv1's kernels, and for a run folder its curves and status, updating
    POST /predict      multipart field ``image`` -> {"top": [{"index", "class", "name", "probability"}, ...]}
    GET  /api/info     the model: name, classes, input, checkpoint, epoch and step
    GET  /api/run      the run's row of ``alexnet runs`` and its epoch records (404 without a run)
    GET  /kernels.png  conv1 as an image (alexnet.models.kernels, the grid of Figure 3)
    GET  /curves.png   the run's curves (alexnet.report.plot_curves, as in the run folder's curves.png)

Limits: an upload larger than ``max_upload_bytes`` gets 413 (its body is read and dropped
first, so that the client, a browser included, gets the answer rather than a reset
connection); an image of more than ``max_pixels`` pixels gets 413 from its header alone,
before any pixel is decoded. Not an image: 415; a damaged one: 400; an empty body, no
field named ``image`` or an empty file: 400.

Given a run folder, the model is the folder's newest checkpoint (``last``, else ``best``),
reloaded when that file changes - a run that is still training is served at its latest
epoch - and the curves are redrawn when its logs change. Requests are handled on threads;
decoding and the forward pass are serialised by one lock (the decoder's scratch buffers and
matplotlib are not thread-safe; one image at a time keeps a CPU's threads for that image).

The web library: Flask (on Werkzeug), docs/viewer.md says why.
"""

from __future__ import annotations

import io
import os
import socket
import sys
import tempfile
import threading
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from flask import Flask, Response, jsonify, request
from PIL import Image
from werkzeug.exceptions import HTTPException

from .. import report
from ..console import first_line, info, warn
from ..data.decode import sniff_format
from ..errors import UserError
from ..eval.predict import Predictor
from ..models.kernels import kernel_grid
from ..train import rundir
from ..train.runs import is_run_folder, read_run

TOP = 5
DRAIN_LIMIT = 1 << 30     # bytes of a too-large upload read and dropped so the client hears 413; past it, a reset


@dataclass(frozen=True)
class Limits:
    """What an upload may be: its size in bytes, and its pixels (width x height, read from the header)."""

    max_upload_bytes: int = 20 * 2**20
    max_pixels: int = 50_000_000


class Refused(HTTPException):
    """A request refused with a status and one line (the JSON error handler words it)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def _png(image) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _version(*paths: Path) -> tuple:
    """What changes when any of ``paths`` is rewritten: (size, mtime) of each (None when absent)."""
    out = []
    for path in paths:
        try:
            st = path.stat()
            out.append((st.st_size, st.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


class ModelHolder:
    """The served model: the checkpoint file (a run folder's newest), reloaded when the file changes.
    ``lock`` serialises decoding and inference (module docstring)."""

    def __init__(self, checkpoint: str | os.PathLike, device: str | None = None):
        self.source, self.device = Path(checkpoint), device
        self.lock = threading.RLock()       # reentrant: /predict holds it while it asks for current()
        self.version = None
        self.predictor = self._load()        # UserError at start: a server that cannot classify does not start
        self.kernels_png = _png(kernel_grid(self.predictor.model))

    def _file(self) -> Path:
        if self.source.is_dir():
            for name in (rundir.LAST, rundir.BEST):
                if (self.source / name).is_file():
                    return self.source / name
        return self.source

    def _load(self) -> Predictor:
        path = self._file()
        version = _version(path)
        predictor = Predictor(path, device=self.device)
        self.version = version
        return predictor

    def current(self) -> Predictor:
        """The predictor of the newest checkpoint; the one before when the new file cannot be read (said once)."""
        with self.lock:
            if _version(self._file()) != self.version:
                try:
                    self.predictor = self._load()
                    self.kernels_png = _png(kernel_grid(self.predictor.model))
                    info(f"serving {self.predictor.info['path']} (epoch {self.predictor.info.get('epoch')})")
                except UserError as exc:
                    self.version = _version(self._file())      # do not retry the same file on every request
                    warn(f"{exc}; still serving the checkpoint loaded before")
            return self.predictor


class RunView:
    """A run folder's row, epoch records and curves PNG, redrawn only when its logs change."""

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self._curves: tuple[tuple, bytes | None] = ((), None)

    def version(self) -> tuple:
        return _version(self.run_dir / "epochs.jsonl", self.run_dir / "steps.jsonl")

    def summary(self) -> dict:
        run = read_run(self.run_dir)
        return {**run.to_dict(), "records": run.records, "version": "-".join(map(str, self.version()))}

    def curves_png(self) -> bytes | None:
        version = self.version()
        if self._curves[0] != version:
            epochs = report.read_jsonl(self.run_dir / "epochs.jsonl")
            png = None
            if epochs:
                with tempfile.TemporaryDirectory() as tmp:
                    out = Path(tmp) / "curves.png"
                    report.plot_curves(epochs, out, title=self.run_dir.name,
                                       steps=report.read_jsonl(self.run_dir / "steps.jsonl"))
                    png = out.read_bytes()
            self._curves = (version, png)
        return self._curves[1]


def _image_size(data: bytes, limits: Limits) -> tuple[int, int]:
    """(width, height) from the image's header alone; Refused for something that is not an image, or too big."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                width, height = probe.size
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise Refused(413, f"image too large ({first_line(exc)})") from None
    except Exception as exc:   # PIL raises many kinds for bytes that are not an image
        fmt = sniff_format(data)
        if fmt is not None:     # an image's signature, then nothing readable: a damaged file
            raise Refused(400, f"damaged {fmt} ({type(exc).__name__}: {first_line(exc)})") from None
        raise Refused(415, f"not an image ({type(exc).__name__}; {len(data):,} bytes)") from None
    if width * height > limits.max_pixels:
        raise Refused(413, f"image of {width}x{height} = {width * height:,} pixels, over the limit of "
                           f"{limits.max_pixels:,}")
    return width, height


def create_app(checkpoint: str | os.PathLike, *, device: str | None = None, limits: Limits = Limits()) -> Flask:
    """The WSGI application serving ``checkpoint`` (a file, or a run folder: then its curves too)."""
    holder = ModelHolder(checkpoint, device)
    run = RunView(Path(checkpoint)) if Path(checkpoint).is_dir() and is_run_folder(Path(checkpoint)) else None
    page = resources.files("alexnet.serve").joinpath("page.html").read_bytes()
    app = Flask("alexnet.serve")
    app.json.sort_keys = False      # {"index", "class", "name", "probability"} in that order
    # A safety net for bodies without a Content-Length (chunked); a declared length is checked first (below).
    app.config["MAX_CONTENT_LENGTH"] = limits.max_upload_bytes

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = exc.description if isinstance(exc, Refused) else f"{exc.name}: {exc.description or ''}"
        return jsonify(error=" ".join(str(message).split())), exc.code     # one line, whatever the text

    @app.errorhandler(Exception)
    def internal_error(exc: Exception):
        app.logger.exception("alexnet serve: unexpected error")     # the traceback stays on the server's stderr
        return jsonify(error=f"internal error ({type(exc).__name__}); see the server's log"), 500

    @app.get("/")
    def index():
        return Response(page, mimetype="text/html")

    @app.get("/api/info")
    def api_info():
        predictor = holder.current()
        i = predictor.info
        return jsonify(model=i["name"], checkpoint=i["path"], classes=len(predictor.classes),
                       input=predictor.spec.describe(), epoch=i.get("epoch"), step=i.get("step"),
                       run=run is not None, top=TOP, max_upload_bytes=limits.max_upload_bytes,
                       max_pixels=limits.max_pixels)

    @app.get("/api/run")
    def api_run():
        if run is None:
            raise Refused(404, "not serving a run folder: give `alexnet serve` a run folder to see its curves")
        return jsonify(run.summary())

    @app.get("/kernels.png")
    def kernels():
        holder.current()
        return Response(holder.kernels_png, mimetype="image/png", headers={"Cache-Control": "no-cache"})

    @app.get("/curves.png")
    def curves():
        if run is None:
            raise Refused(404, "not serving a run folder")
        with holder.lock:
            png = run.curves_png()
        if png is None:
            raise Refused(404, "no epoch logged yet")
        return Response(png, mimetype="image/png", headers={"Cache-Control": "no-cache"})

    @app.post("/predict")
    def predict():
        length = request.content_length
        if length is not None and length > limits.max_upload_bytes:
            if length <= DRAIN_LIMIT:
                # Read what the client sends before answering: a server that answers and closes with the
                # body unread resets the connection, and the client sees a network error, not this 413.
                # (Werkzeug's server drains too, but stops at the first 10 ms without data: a slow client.)
                stream = request.environ["wsgi.input"]
                left = length
                while left > 0 and (chunk := stream.read(min(left, 1 << 20))):
                    left -= len(chunk)
            raise Refused(413, f"upload of {length:,} bytes, over the limit of {limits.max_upload_bytes:,}")
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        if length == 0 or (length is None and not chunked):
            raise Refused(400, "empty request: send the image as a multipart form field named 'image'")
        if request.mimetype != "multipart/form-data":
            raise Refused(415, f"send the image as multipart/form-data in a field named 'image' "
                               f"(got {request.mimetype or 'no content type'})")
        upload = request.files.get("image")
        if upload is None:
            fields = sorted(set(request.files) | set(request.form))
            raise Refused(400, "no form field named 'image'" + (f" (got: {', '.join(fields)})" if fields else ""))
        data = upload.read()
        name = upload.filename or "upload"
        if not data:
            raise Refused(400, f"{name}: the uploaded file is empty (0 bytes)")
        _image_size(data, limits)
        with holder.lock:
            predictor = holder.current()
            try:
                square = predictor.decode(data, name)
            except UserError as exc:
                raise Refused(400, str(exc)) from None
            top = predictor.top([square], TOP)[0]
        return jsonify(top=[{"index": t["index"], "class": t["class"], "name": t["name"], "probability": t["prob"]}
                            for t in top])

    return app


def serve(checkpoint: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, device: str | None = None,
          limits: Limits = Limits()) -> None:
    """Serve until interrupted; the first line says where (port 0: a free port, the one chosen)."""
    from werkzeug.serving import make_server
    if limits.max_pixels > (Image.MAX_IMAGE_PIXELS or limits.max_pixels):
        raise UserError(f"--max-pixels {limits.max_pixels:,}: above the decoder's own limit of "
                        f"{Image.MAX_IMAGE_PIXELS:,} pixels")
    app = create_app(checkpoint, device=device, limits=limits)
    try:     # bound here, not by Werkzeug, which would print its own lines and exit on a port in use
        listener = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port") from None
    server = make_server(host, listener.getsockname()[1], app, threaded=True, fd=listener.fileno())
    shown = f"[{host}]" if ":" in host else host
    info(f"serving {checkpoint} at http://{shown}:{server.port}/ (JSON API: POST /predict with a "
         f"multipart field 'image'; Ctrl-C stops)")
    if host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"listening on {host}: other machines can reach this server, which has no authentication")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        sys.stderr.write("alexnet: serve stopped\n")
    finally:
        server.server_close()
        listener.close()
