"""Fetching: local paths, root/prefix_map, fsspec memory://, and a faulty HTTP server on loopback."""

from __future__ import annotations

import collections
import io
import socket
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import polars as pl
import pytest
from PIL import Image

from mmprep import Context
from mmprep.media import MediaStage

from .conftest import jpeg

IMG = jpeg(96, 64, seed=7)


class Server:
    """Loopback HTTP server with fault paths; counts requests per path."""

    def __init__(self):
        self.hits: collections.Counter = collections.Counter()
        self.agents: list[str] = []
        self.active = 0
        self.max_active = 0
        self.lock = threading.Lock()
        self.gate = threading.Event()  # /gate/* waits for it: set once `gate_after` /ok/* were served
        self.gate_after = 1 << 30
        self.gate_timed_out = 0
        self.connections = 0  # TCP connections accepted
        self.open: set = set()  # their sockets, while open
        srv = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with srv.lock:
                    srv.connections += 1
                    srv.open.add(self.connection)

            def finish(self):
                with srv.lock:
                    srv.open.discard(self.connection)
                super().finish()

            def _send(self, status, body=b"", headers=()):
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                path = self.path
                with srv.lock:
                    srv.hits[path] += 1
                    n = srv.hits[path]
                    srv.agents.append(self.headers.get("User-Agent", ""))
                    srv.active += 1
                    srv.max_active = max(srv.max_active, srv.active)
                try:
                    self.route(path, n)
                finally:
                    with srv.lock:
                        srv.active -= 1
                        if path.startswith("/ok/") and sum(v for k, v in srv.hits.items() if k.startswith("/ok/")) >= srv.gate_after:
                            srv.gate.set()

            def route(self, path, n):
                kind = path.strip("/").split("/")[0]
                if kind == "ok":
                    self._send(200, IMG, [("Content-Type", "image/jpeg")])
                elif kind == "slowok":
                    time.sleep(0.15)
                    self._send(200, IMG)
                elif kind == "404":
                    self._send(404, b"nope")
                elif kind == "closing":  # what nginx answers a client that sent Connection: close
                    self._send(200, IMG, [("Connection", "close")])
                    self.close_connection = True
                elif kind == "chunked":
                    self.send_response(200)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(IMG), 1000):
                        part = IMG[i:i + 1000]
                        self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                elif kind == "slow404":
                    time.sleep(0.3)
                    self._send(404, b"nope")
                elif kind == "gate":
                    if not srv.gate.wait(5):
                        srv.gate_timed_out += 1
                    self._send(200, IMG)
                elif kind == "403":
                    self._send(403, b"forbidden")
                elif kind == "flaky500":
                    self._send(500, b"oops") if n == 1 else self._send(200, IMG)
                elif kind == "always500":
                    self._send(500, b"oops")
                elif kind == "flaky429":
                    self._send(429, b"slow down", [("Retry-After", "1")]) if n == 1 else self._send(200, IMG)
                elif kind == "flaky503":
                    self._send(503, b"busy", [("Retry-After", "1")]) if n == 1 else self._send(200, IMG)
                elif kind == "always429":
                    self._send(429, b"slow down", [("Retry-After", "0")])
                elif kind == "longretry":
                    self._send(429, b"slow down", [("Retry-After", "3600")])
                elif kind == "slow":
                    time.sleep(1.5)
                    self._send(200, IMG)
                elif kind == "truncated":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(IMG)))
                    self.end_headers()
                    self.wfile.write(IMG[: len(IMG) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif kind == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()
                elif kind == "redirect":
                    self._send(302, b"", [("Location", "/ok/redirected")])
                elif kind == "html":
                    self._send(200, b"<html><body>Sorry, this image is gone</body></html>", [("Content-Type", "text/html")])
                else:
                    self._send(400, b"bad")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def drop_idle(self, wait: float = 5.0):
        """Close every (idle) client connection, as a server's keep-alive timeout does."""
        with self.lock:
            socks = list(self.open)
        for c in socks:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while self.open and time.monotonic() < deadline:
            time.sleep(0.01)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


FAST = {"backoff": 0.01, "max_backoff": 0.05, "retries": 2, "read_timeout": 0.4, "connect_timeout": 2.0}


def run(stage_opts: dict, urls: list[str]) -> tuple[pl.DataFrame, MediaStage]:
    stage = MediaStage.from_config(stage_opts, Context())
    out = stage.process(pl.DataFrame({"key": [f"k{i}" for i in range(len(urls))], "image_path": urls}))
    return out, stage


def reasons(out: pl.DataFrame) -> list:
    return out["_reject_reason"].to_list()


def test_http_faults_reasons_and_retries(server):
    u = server.url
    paths = ["/ok/1", "/404/a", "/403/a", "/flaky500/a", "/always500/a", "/truncated/a", "/reset/a", "/redirect/a", "/html/a"]
    out, stage = run({**FAST, "user_agent": "mmprep-test/1"}, [u + p for p in paths])
    got = dict(zip(paths, reasons(out)))
    assert got == {
        "/ok/1": None,
        "/404/a": "http_404",
        "/403/a": "http_4xx",
        "/flaky500/a": None,
        "/always500/a": "http_5xx",
        "/truncated/a": "connection_error",
        "/reset/a": "connection_error",
        "/redirect/a": None,
        "/html/a": "not_an_image",
    }
    h = server.hits
    assert h["/404/a"] == 1 and h["/403/a"] == 1  # no retry on 404/403
    assert h["/flaky500/a"] == 2  # 500 then success
    assert h["/always500/a"] == 3 and h["/truncated/a"] == 3 and h["/reset/a"] == 3  # 1 + retries
    assert h["/ok/redirected"] == 1
    assert set(server.agents) == {"mmprep-test/1"}
    msgs = dict(zip(paths, out["_reject_message"].to_list()))
    assert "truncated body" in msgs["/truncated/a"] and "after 3 attempts" in msgs["/truncated/a"]
    assert "HTTP 404" in msgs["/404/a"]
    ok = out.filter(pl.col("key") == "k0")
    assert ok["image_bytes"][0] == IMG  # passthrough of the fetched bytes
    assert (ok["width"][0], ok["height"][0]) == (96, 64)
    assert stage.last_stats["retries"] == 1 + 2 + 2 + 2


@pytest.mark.parametrize("kind", ["flaky429", "flaky503"])
def test_retry_after_honoured(server, kind):
    t = time.monotonic()
    out, stage = run({**FAST, "backoff": 0.0}, [f"{server.url}/{kind}/x"])
    took = time.monotonic() - t
    assert reasons(out) == [None]
    assert server.hits[f"/{kind}/x"] == 2
    assert took >= 0.95  # waited Retry-After: 1 (backoff alone would be ~0)
    assert stage.last_stats["waited_s"] >= 1.0


def test_rate_limit_exhausted_and_long_retry_after(server):
    t = time.monotonic()
    out, _ = run({**FAST, "max_retry_after": 10}, [f"{server.url}/always429/x", f"{server.url}/longretry/x"])
    assert reasons(out) == ["too_many_retries", "too_many_retries"]
    assert server.hits["/always429/x"] == 3
    assert server.hits["/longretry/x"] == 1  # Retry-After 3600 > max_retry_after: give up at once
    assert time.monotonic() - t < 5


def test_slow_response_times_out(server):
    t = time.monotonic()
    out, _ = run({**FAST, "retries": 1, "read_timeout": 0.3}, [f"{server.url}/slow/x"])
    assert reasons(out) == ["timeout"]
    assert server.hits["/slow/x"] == 2
    assert time.monotonic() - t < 1.5


def test_connection_refused(server):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out, _ = run({**FAST, "retries": 1}, [f"http://127.0.0.1:{port}/x.jpg"])
    assert reasons(out) == ["connection_error"]


def test_per_host_limit_and_bounded_window(server):
    urls = [f"{server.url}/slowok/{i}" for i in range(8)]
    out, _ = run({**FAST, "threads": 8, "per_host": 2, "read_timeout": 5}, urls)
    assert reasons(out) == [None] * 8
    assert server.max_active <= 2
    assert out["key"].to_list() == [f"k{i}" for i in range(8)]  # order kept


def test_a_slow_url_does_not_hold_back_the_window(server):
    # the first URL is answered only after 6 others were served; with a window of 2 that must be
    # consumed in list order the others could not be fetched until the gate gave up (5 s)
    server.gate_after = 6
    urls = [f"{server.url}/gate/0"] + [f"{server.url}/ok/{i}" for i in range(6)]
    out, _ = run({**FAST, "threads": 2, "in_flight": 2, "read_timeout": 10}, urls)
    assert reasons(out) == [None] * 7
    assert server.gate_timed_out == 0
    assert out["key"].to_list() == [f"k{i}" for i in range(7)]  # order kept
    assert out["image_bytes"].null_count() == 0


def test_extra_images_first_failing_position_names_the_row(server):
    # [0] fails after [1] has failed (fetches complete in any order): position 0 still names the row
    u = server.url
    stage = MediaStage.from_config({**FAST, "extra_image_columns": ["refs"]}, Context())
    df = pl.DataFrame({"key": ["a", "b"], "image_path": [f"{u}/ok/a", f"{u}/ok/b"],
                       "refs": [[f"{u}/slow404/a0", f"{u}/404/a1"], [f"{u}/ok/b0", f"{u}/ok/b1"]]})
    out = stage.process(df)
    assert reasons(out) == ["http_404", None]
    assert out["_reject_message"][0].startswith("refs[0]: ")
    assert [len(x) for x in out["refs_media"].to_list()[1:]] == [2]


@pytest.mark.parametrize("keep_alive", [True, False])
def test_connection_close_and_chunked_responses(server, keep_alive):
    # "Connection: close" hands the socket to the response (http.client's conn.sock is None then)
    urls = [f"{server.url}/{k}/{i}" for i, k in enumerate(["closing", "chunked", "ok", "closing", "chunked", "404", "ok"])]
    out, _ = run({**FAST, "threads": 1, "keep_alive": keep_alive}, urls)
    assert reasons(out) == [None, None, None, None, None, "http_404", None]
    assert all(b == IMG for b in out["image_bytes"].to_list()[:5])


def test_keep_alive_reuses_connections(server):
    urls = [f"{server.url}/{k}/{i}" for i, k in enumerate(["ok", "404", "ok", "flaky500", "ok", "chunked", "ok", "closing", "ok", "ok"])]
    out, _ = run({**FAST, "threads": 1}, urls)
    assert reasons(out)[1] == "http_404" and [r for i, r in enumerate(reasons(out)) if i != 1] == [None] * 9
    # one thread: every request reuses the connection, except after "Connection: close" (closing)
    assert server.connections == 2, server.connections
    out, _ = run({**FAST, "threads": 1, "keep_alive": False}, [f"{server.url}/ok/a{i}" for i in range(5)])
    assert reasons(out) == [None] * 5 and server.connections == 2 + 5


def test_keep_alive_with_descriptors_above_1023(server):
    # select() cannot take descriptors above 1023: the idle check must still work there
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1400
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    try:
        out, _ = run({**FAST, "threads": 1}, [f"{server.url}/ok/{i}" for i in range(4)])
        assert reasons(out) == [None] * 4
        assert server.connections == 1
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_keep_alive_detects_a_connection_the_server_closed(server):
    stage = MediaStage.from_config({**FAST, "threads": 1, "retries": 0}, Context())
    for i in range(3):
        out = stage.process(pl.DataFrame({"key": ["a"], "image_path": [f"{server.url}/ok/r{i}"]}))
        assert reasons(out) == [None]
        server.drop_idle()  # the server times idle connections out between the units
    assert server.connections == 3


def test_max_bytes(server):
    out, _ = run({**FAST, "max_bytes": 100}, [f"{server.url}/ok/big"])
    assert reasons(out) == ["too_large"]


def test_credentials_in_urls_never_in_messages(server):
    out, _ = run(FAST, [f"http://user:hunter2pw@127.0.0.1:{server.httpd.server_address[1]}/404/x"])
    assert reasons(out) == ["http_404"]
    assert "hunter2pw" not in out["_reject_message"][0]


# -- local files, root, prefix_map, fsspec ---------------------------------------------------
def test_local_paths_root_prefix_map_and_file_urls(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(IMG)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "b.jpg").write_bytes(IMG)
    stage = MediaStage.from_config(
        {"root": "imgs", "prefix_map": {"s3://someone-elses-bucket/": str(tmp_path / "mirror") + "/", "s3://": "/nonexistent/"}},
        Context(base_dir=tmp_path),
    )
    paths = ["a.jpg", "./a.jpg", "s3://someone-elses-bucket/b.jpg", f"file://{tmp_path}/imgs/a.jpg", str(tmp_path / "imgs" / "a.jpg"), "missing.jpg", None, "s3://other/x.jpg"]
    out = stage.process(pl.DataFrame({"key": [f"k{i}" for i in range(len(paths))], "image_path": paths}))
    assert reasons(out) == [None, None, None, None, None, "not_found", "missing_image", "not_found"]
    assert "/nonexistent/other/x.jpg" in out["_reject_message"][7]


def test_memory_fsspec_url():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/media-test/one.jpg", IMG)
    out, _ = run({}, ["memory://media-test/one.jpg", "memory://media-test/none.jpg"])
    assert reasons(out) == [None, "not_found"]
    assert Image.open(io.BytesIO(out["image_bytes"][0])).size == (96, 64)
    out, _ = run({"max_bytes": 1000}, ["memory://media-test/one.jpg"])
    assert reasons(out) == ["too_large"]


def test_bytes_and_paths_mixed(tmp_path):
    (tmp_path / "a.jpg").write_bytes(IMG)
    stage = MediaStage.from_config({"size": 32}, Context(base_dir=tmp_path))
    df = pl.DataFrame({"key": ["a", "b"], "image_path": ["a.jpg", "does-not-matter.jpg"], "image_bytes": [None, IMG]}, schema={"key": pl.String, "image_path": pl.String, "image_bytes": pl.Binary})
    out = stage.process(df)
    assert reasons(out) == [None, None]
    assert out["stored_height"].to_list() == [32, 32]
    with pytest.raises(KeyError):
        stage.process(pl.DataFrame({"key": ["a"]}))
