"""`alexnet serve` as a real subprocess on a loopback port, and a plain HTTP client for it.

Only 127.0.0.1 is ever used. The server is started with ``--port 0`` and the port it chose is
read from its first line; it is stopped (SIGTERM, then SIGKILL) when the test ends.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import subprocess
import threading
import uuid
from contextlib import contextmanager

from train_support import CLI_ENV, popen_cli, wait_for

HOST = "127.0.0.1"


class Server:
    def __init__(self, proc: subprocess.Popen, port: int, log: list[str]):
        self.proc, self.port, self.log = proc, port, log     # log: the server's stderr lines so far
        self.url = f"http://{HOST}:{port}"
        # Keep reading its stderr (one line per request): a full pipe would stop the server.
        self._reader = threading.Thread(target=lambda: log.extend(iter(proc.stderr.readline, "")), daemon=True)
        self._reader.start()

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
                timeout: float = 120) -> tuple[int, str, bytes]:
        """(status, content type, body) of one request on a fresh connection."""
        conn = http.client.HTTPConnection(HOST, self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, response.getheader("Content-Type", ""), response.read()
        finally:
            conn.close()

    def upload(self, data: bytes, filename: str = "image.jpg", field: str = "image") -> tuple[int, dict]:
        """POST /predict with ``data`` as the multipart field ``field``: (status, JSON answer)."""
        status, kind, body = self.request("POST", "/predict", *multipart(field, filename, data))
        assert kind.startswith("application/json"), (status, kind, body[:200])
        return status, json.loads(body)

    def alive(self) -> bool:
        return self.proc.poll() is None and self.request("GET", "/api/info")[0] == 200


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, dict]:
    """A multipart/form-data body with one file field, as a browser's FormData sends it."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"{filename}\"\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


@contextmanager
def running_server(checkpoint, *extra: str):
    """``alexnet serve CHECKPOINT --port 0 ...`` until the block ends; yields a :class:`Server`."""
    proc = popen_cli("serve", checkpoint, "--port", "0", "--device", "cpu", *extra, env=CLI_ENV)
    lines: list[str] = []

    def started():
        line = proc.stderr.readline()
        lines.append(line)
        match = re.search(r"at http://127\.0\.0\.1:(\d+)/", line)
        return int(match.group(1)) if match else None

    try:
        port = wait_for(started, timeout=300, proc=proc)
        yield Server(proc, port, lines)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
