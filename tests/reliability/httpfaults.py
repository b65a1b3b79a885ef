"""A loopback HTTP server whose paths choose the fault: /<kind>/<id>.

The server runs in its own process. In the test process it would share the GIL with an in-process
pipeline's 32 fetch threads, and on a loaded 2-core machine a starved handler thread can miss the
client's read timeout, which turns a fault-free request into a (correctly) retried one and makes
exact retry counts unobservable. ``GET /__hits__`` returns the per-path request counts as JSON and
is not counted itself.
"""

from __future__ import annotations

import base64
import collections
import json
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

#: kind -> the rejection reason the sample must end with (None = written)
EXPECTED = {
    "ok": None,
    "404": "http_404",
    "always500": "http_5xx",
    "flaky500": None,  # 500 once, then 200
    "flaky429": None,  # 429 + Retry-After once, then 200
    "always429": "too_many_retries",
    "slow": "timeout",
    "truncated": "connection_error",
    "reset": "connection_error",
    "notimage": "not_an_image",
}
FAULTS = [k for k in EXPECTED if k != "ok"]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # read by listen() in the constructor: must be a class attribute

    def handle_error(self, request, client_address):
        pass  # clients that gave up (timeouts, resets) are expected


class _Faults:
    """The server itself (runs in the child process, see :func:`main`)."""

    def __init__(self, image: bytes, slow_s: float):
        self.hits: collections.Counter = collections.Counter()
        self.lock = threading.Lock()
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/__hits__":
                    with srv.lock:
                        body = json.dumps(dict(srv.hits)).encode()
                    return self._send(200, body, [("Content-Type", "application/json")])
                with srv.lock:
                    srv.hits[self.path] += 1
                    n = srv.hits[self.path]
                kind = self.path.strip("/").split("/")[0]
                if kind == "ok":
                    self._send(200, image, [("Content-Type", "image/jpeg")])
                elif kind == "404":
                    self._send(404, b"nope")
                elif kind == "always500":
                    self._send(500, b"oops")
                elif kind == "flaky500":
                    self._send(500, b"oops") if n == 1 else self._send(200, image)
                elif kind == "flaky429":
                    self._send(429, b"slow down", [("Retry-After", "1")]) if n == 1 else self._send(200, image)
                elif kind == "always429":
                    self._send(429, b"slow down", [("Retry-After", "0")])
                elif kind == "slow":
                    time.sleep(slow_s)
                    try:
                        self._send(200, image)
                    except OSError:
                        pass
                elif kind == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(image)))
                    self.end_headers()
                    self.wfile.write(image[: len(image) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif kind == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                elif kind == "notimage":
                    self._send(200, b"<html>gone</html>", [("Content-Type", "text/html")])
                else:
                    self._send(400, b"bad")

        self.httpd = _Server(("127.0.0.1", 0), Handler)


class FaultServer:
    """Starts the fault server in a child process; ``url`` and ``hits`` as if it were local."""

    def __init__(self, image: bytes, slow_s: float = 0.5):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from tests.reliability.httpfaults import main; main(float(sys.argv[1]))", str(slow_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_repo_root(),
        )
        self.proc.stdin.write(base64.b64encode(image) + b"\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"fault server did not start (exit {self.proc.wait()})")
        self.url = f"http://127.0.0.1:{int(line)}"

    @property
    def hits(self) -> collections.Counter:
        with urllib.request.urlopen(f"{self.url}/__hits__", timeout=30) as r:
            return collections.Counter(json.loads(r.read()))

    def close(self):
        self.proc.stdin.close()  # main() exits when its stdin closes
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _repo_root() -> str:
    from pathlib import Path

    return str(Path(__file__).resolve().parents[2])


def main(slow_s: float) -> None:
    image = base64.b64decode(sys.stdin.readline())
    faults = _Faults(image, slow_s)
    threading.Thread(target=faults.httpd.serve_forever, daemon=True).start()
    print(faults.httpd.server_address[1], flush=True)
    sys.stdin.read()  # until the parent closes stdin (or dies)
    faults.httpd.shutdown()
    faults.httpd.server_close()
