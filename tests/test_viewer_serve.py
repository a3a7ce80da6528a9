"""`alexnet serve`: the JSON API, bad uploads, a run folder that trains while it is served.

The server runs as a real subprocess on a loopback port (tests/serve_support.py) and is
spoken to over HTTP. The reference for every prediction is ``alexnet.eval.predict.predict``
on the same file; for every bad upload: a 4xx with one line of JSON, and the server still
answering afterwards, with no traceback in its log.
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from alexnet.checkpoint import load_model
from alexnet.data import open_cache
from alexnet.eval.predict import predict
from alexnet.models.kernels import kernel_grid

from conftest import run_cli
from serve_support import multipart, running_server
from train_support import CLI_ENV, one_line_error

pytest.importorskip("flask", reason="Flask is not installed (pip install flask)")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def test_images(fmnist_cache, tmp_path_factory):
    """Two real test images of the cache (PNG) and a real ILSVRC photo when ../shared has one."""
    folder = tmp_path_factory.mktemp("uploads")
    split = open_cache(fmnist_cache).split("test")
    paths = []
    for i in range(2):
        path = folder / f"test{i}.png"
        Image.fromarray(np.asarray(split.images[i])[:, :, 0]).save(path)
        paths.append(path)
    return paths


def png_claiming(width: int, height: int) -> bytes:
    """A well-formed PNG whose header says width x height (8-bit grey) and whose data is a few bytes:
    what a decompression bomb looks like to a server before it decodes anything."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_predict_api_answers_the_top5_predict_gives(trained_run, test_images):
    with running_server(trained_run) as server:
        status, kind, page = server.request("GET", "/")
        assert status == 200 and kind.startswith("text/html") and b'id="top5"' in page
        info = json.loads(server.request("GET", "/api/info")[2])
        assert info["model"] == "alexnet_small" and info["classes"] == 10 and info["run"] is True
        for path in test_images:
            status, answer = server.upload(path.read_bytes(), path.name)
            assert status == 200, answer
            reference = predict(trained_run, [path], topk=5)[0]["top"]
            assert [set(t) for t in answer["top"]] == [{"index", "class", "name", "probability"}] * 5
            assert [(t["index"], t["class"], t["name"]) for t in answer["top"]] == [
                (t["index"], t["class"], t["name"]) for t in reference]
            assert [t["probability"] for t in answer["top"]] == pytest.approx([t["prob"] for t in reference], abs=1e-6)
        _, model_info = load_model(trained_run / "last.safetensors")
        assert all(model_info["classes"][t["index"]] == t["class"] for t in answer["top"])


def test_bad_uploads_get_a_4xx_with_one_line_of_json_and_the_server_stays_up(trained_run, test_images):
    good = test_images[0].read_bytes()
    big_png = io.BytesIO()
    Image.fromarray(np.zeros((1000, 1200), np.uint8)).save(big_png, format="PNG")     # 1.2 megapixels, ~5 kB
    jpeg = io.BytesIO()
    Image.open(test_images[0]).save(jpeg, format="JPEG")
    cases = [   # (what, body, headers, expected status)
        ("text named .jpg", *multipart("image", "notes.jpg", b"just some text, not an image"), 415),
        ("truncated JPEG", *multipart("image", "cut.jpg", jpeg.getvalue()[:200]), 400),
        ("empty file", *multipart("image", "empty.jpg", b""), 400),
        ("no 'image' field", *multipart("file", "test.png", good), 400),
        ("empty body", b"", {"Content-Type": "multipart/form-data; boundary=x"}, 400),
        ("no body at all", None, {}, 400),
        ("JSON body", b'{"image": "x"}', {"Content-Type": "application/json"}, 415),
        ("broken multipart", b"--x\r\nnot a part at all", {"Content-Type": "multipart/form-data; boundary=x"}, 400),
        ("over the upload limit", *multipart("image", "big.jpg", np.random.default_rng(0).bytes(1_500_000)), 413),
        ("over the pixel limit", *multipart("image", "big.png", big_png.getvalue()), 413),
        ("decompression bomb", *multipart("image", "bomb.png", png_claiming(100_000, 100_000)), 413),
    ]
    with running_server(trained_run, "--max-upload-mb", "1", "--max-pixels", "1000000") as server:
        for what, body, headers, expected in cases:
            status, kind, raw = server.request("POST", "/predict", body, headers)
            assert status == expected, (what, status, raw[:300])
            assert kind.startswith("application/json"), what
            answer = json.loads(raw)
            assert list(answer) == ["error"] and "\n" not in answer["error"] and answer["error"], what
            assert "Traceback" not in answer["error"], what
            assert server.alive(), what
            assert server.upload(good, "test.png")[0] == 200, f"a good upload after: {what}"
        for method, path, expected in (("GET", "/predict", 405), ("GET", "/nothing", 404), ("PUT", "/predict", 405)):
            status, kind, raw = server.request(method, path)
            assert status == expected and list(json.loads(raw)) == ["error"]
        assert server.upload(good, "имя файла.png")[0] == 200        # any file name
        log = "".join(server.log)
    assert "Traceback" not in log and " 500 " not in log


def test_a_run_folder_is_served_with_its_curves_while_it_trains(fmnist_cache, trained_run, test_images, tmp_path):
    """The fixture's 1-epoch run, copied, served, then trained on to 3 epochs (--resume): the page's
    model, kernels, status and curves follow the run folder."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    with running_server(run) as server:
        before = json.loads(server.request("GET", "/api/info")[2])
        state = json.loads(server.request("GET", "/api/run")[2])
        assert before["epoch"] == 1 and state["status"] == "finished" and state["epochs_done"] == 1
        assert len(state["records"]) == 1
        status, kind, png = server.request("GET", "/kernels.png")
        model, _ = load_model(run / "last.safetensors")
        assert status == 200 and kind == "image/png"
        assert Image.open(io.BytesIO(png)).size[::-1] == kernel_grid(model).shape[:2]
        status, kind, curves = server.request("GET", "/curves.png")
        assert status == 200 and curves[:4] == b"\x89PNG"
        first_answer = server.upload(test_images[0].read_bytes(), "a.png")[1]

        resumed = run_cli("train", "--resume", run, "--train.epochs", "3", "--quiet", env=CLI_ENV)
        assert resumed.returncode == 0, resumed.stderr

        after = json.loads(server.request("GET", "/api/info")[2])
        state = json.loads(server.request("GET", "/api/run")[2])
        assert after["epoch"] == 3 and after["step"] > before["step"]
        assert state["status"] == "finished" and state["epochs_done"] == 3 and len(state["records"]) == 3
        answer = server.upload(test_images[0].read_bytes(), "a.png")[1]
        reference = predict(run, [test_images[0]], topk=5)[0]["top"]      # the new weights
        assert [t["probability"] for t in answer["top"]] == pytest.approx([t["prob"] for t in reference], abs=1e-6)
        assert answer != first_answer
        assert server.request("GET", "/curves.png")[2] != curves


def test_a_checkpoint_file_has_no_run_and_start_up_errors_are_one_line(trained_run, tmp_path):
    with running_server(trained_run / "best.safetensors") as server:
        status, _, raw = server.request("GET", "/api/run")
        assert status == 404 and "run folder" in json.loads(raw)["error"]
        assert server.request("GET", "/curves.png")[0] == 404
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_error(run_cli("serve", trained_run, "--port", str(port), env=CLI_ENV), f"127.0.0.1:{port}", "in use")
    one_line_error(run_cli("serve", tmp_path / "none.safetensors"), str(tmp_path / "none.safetensors"))
    bad = run_cli("serve", trained_run, "--port", "70000")
    assert bad.returncode == 2 and "--port" in bad.stderr
