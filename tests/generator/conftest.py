from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from generator.models import DreamModels, load_models


@pytest.fixture(scope="session")
def tiny_models() -> DreamModels:
    """The tiny preset, fp32 CLIP, on the CPU: what the test suite dreams with."""
    return load_models("tiny", [128], torch.device("cpu"), torch.float32)


class FakeWeightsServer:
    """Serves `payloads[path]`; a path in `truncated` announces more bytes than it sends, then hangs up.

    `during_transfer`, if set, is called after part of a truncated body went out, while the client still waits.
    """

    def __init__(self) -> None:
        self.payloads: dict[str, bytes] = {}
        self.truncated: set[str] = set()
        self.during_transfer = None
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                with server._lock:
                    server.requests.append(("GET", self.path))
                body = server.payloads.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                if self.path in server.truncated:
                    self.send_header("Content-Length", str(len(body) + 10_000))
                    self.end_headers()
                    self.wfile.write(body)
                    self.wfile.flush()
                    if server.during_transfer is not None:
                        server.during_transfer()
                    self.close_connection = True
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_HEAD(self) -> None:  # noqa: N802
                with server._lock:
                    server.requests.append(("HEAD", self.path))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        # shutdown() waits for the serve loop to notice, which polls every 0.5 s by default.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)

    def serve(self, key: str, body: bytes, *, truncated: bool = False) -> None:
        self.payloads["/" + key] = body
        if truncated:
            self.truncated.add("/" + key)

    def __enter__(self) -> FakeWeightsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def server():
    with FakeWeightsServer() as running:
        yield running


@pytest.fixture
def unreachable_url() -> str:
    # A port that was free a moment ago: nothing listens there, so connecting is refused at once.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def cache(tmp_path) -> Path:
    return tmp_path / "cache"
