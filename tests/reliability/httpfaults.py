"""A loopback HTTP server whose paths choose the fault: /<kind>/<id>."""

from __future__ import annotations

import collections
import socket
import struct
import threading
import time
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


class FaultServer:
    def __init__(self, image: bytes, slow_s: float = 0.5):
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

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.request_queue_size = 256
        self.httpd.handle_error = lambda request, address: None  # clients that gave up (timeouts) are expected
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
