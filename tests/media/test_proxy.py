"""HTTP(S) through a proxy: a loopback forward proxy (absolute-form GET and CONNECT tunnels, with
optional Basic auth) in front of the faulty HTTP server and a TLS server whose certificate is
made here for a hostname that does not resolve, so only the proxy can reach it."""

from __future__ import annotations

import base64
import datetime
import json
import selectors
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import polars as pl
import pytest

from mmprep import ConfigError, Context, Pipeline
from mmprep.media import MediaOptions, MediaStage

from .test_fetch import IMG, Server

HOST = "images.example.test"  # RFC 2606: never resolves; only the proxy knows where it is


class Proxy:
    """Forward proxy: every host it is asked for is the origin at ``routes[scheme]``."""

    def __init__(self, routes: dict[str, tuple[str, int]], user: str | None = None, password: str | None = None):
        self.routes = routes
        self.requests: list[tuple[str, str, str | None]] = []  # (method, target, Proxy-Authorization)
        self.need = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() if user else None
        px = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _auth_ok(self) -> bool:
                got = self.headers.get("Proxy-Authorization")
                px.requests.append((self.command, self.path, got))
                if px.need and got != px.need:
                    self.send_response(407, "Proxy Authentication Required")
                    self.send_header("Proxy-Authenticate", 'Basic realm="test"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return False
                return True

            def do_GET(self):
                if not self._auth_ok():
                    return
                u = urlsplit(self.path)  # absolute form: http://host[:port]/path
                up = socket.create_connection(px.routes["http"], timeout=10)
                try:
                    skip = ("proxy-authorization", "connection")
                    hdrs = "".join(f"{k}: {v}\r\n" for k, v in self.headers.items() if k.lower() not in skip)
                    up.sendall(f"GET {u.path or '/'}{'?' + u.query if u.query else ''} HTTP/1.1\r\n{hdrs}Connection: close\r\n\r\n".encode())
                    data = b""
                    while chunk := up.recv(65536):
                        data += chunk
                finally:
                    up.close()
                status, rest = data.split(b"\r\n", 1)
                self.wfile.write(status + b"\r\nConnection: close\r\n" + rest)  # one request per client connection
                self.close_connection = True

            def do_CONNECT(self):
                if not self._auth_ok():
                    return
                up = socket.create_connection(px.routes["https"], timeout=10)
                self.send_response(200, "Connection established")
                self.end_headers()
                sel = selectors.DefaultSelector()  # not select.select: the suite may hold > 1024 descriptors
                sel.register(self.connection, selectors.EVENT_READ, up)
                sel.register(up, selectors.EVENT_READ, self.connection)
                try:
                    while True:
                        ready = sel.select(10)
                        if not ready:
                            break
                        for k, _ in ready:
                            chunk = k.fileobj.recv(65536)
                            if not chunk:
                                return
                            k.data.sendall(chunk)
                finally:
                    sel.close()
                    up.close()
                    self.close_connection = True

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, cred: str = "") -> str:
        return f"http://{cred}127.0.0.1:{self.port}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    """A self-signed certificate for HOST (PEM path); trusted only through SSL_CERT_FILE."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    c = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(c.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return d


@pytest.fixture
def origins(cert):
    """(plain HTTP fault server, TLS server serving IMG on /ok/*)."""
    plain = Server()

    class TLSHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def do_GET(self):
            body = IMG if self.path.startswith("/ok/") else b"nope"
            self.send_response(200 if self.path.startswith("/ok/") else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    tls = ThreadingHTTPServer(("127.0.0.1", 0), TLSHandler)
    tls.daemon_threads = True
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert / "cert.pem", cert / "key.pem")
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
    threading.Thread(target=tls.serve_forever, daemon=True).start()
    yield plain, tls
    plain.close()
    tls.shutdown()
    tls.server_close()


@pytest.fixture
def proxies(origins):
    plain, tls = origins
    routes = {"http": ("127.0.0.1", plain.httpd.server_address[1]), "https": ("127.0.0.1", tls.server_address[1])}
    made: list[Proxy] = []

    def make(**kw) -> Proxy:
        made.append(Proxy(routes, **kw))
        return made[-1]

    yield make
    for p in made:
        p.close()


@pytest.fixture
def no_env_proxy(monkeypatch):
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


FAST = {"backoff": 0.01, "max_backoff": 0.05, "retries": 1, "read_timeout": 5, "connect_timeout": 5}


def fetch(opts: dict, urls: list[str]) -> pl.DataFrame:
    stage = MediaStage.from_config({**FAST, **opts}, Context())
    return stage.process(pl.DataFrame({"key": [f"k{i}" for i in range(len(urls))], "image_path": urls}))


def test_explicit_proxy_http_absolute_form_with_credentials(origins, proxies, no_env_proxy):
    plain, _ = origins
    px = proxies(user="alice", password="p@ss:w0rd")
    origin = f"127.0.0.1:{plain.httpd.server_address[1]}"
    out = fetch({"proxy": px.url("alice:p%40ss%3Aw0rd@")}, [f"http://{origin}/ok/1", f"http://{HOST}:8080/ok/2?x=1", f"http://{origin}/404/3"])
    assert out["_reject_reason"].to_list() == [None, None, "http_404"]
    assert out["image_bytes"][0] == IMG and out["image_bytes"][1] == IMG
    want = "Basic " + base64.b64encode(b"alice:p@ss:w0rd").decode()
    assert sorted(px.requests) == sorted([
        ("GET", f"http://{origin}/ok/1", want), ("GET", f"http://{HOST}:8080/ok/2?x=1", want), ("GET", f"http://{origin}/404/3", want),
    ])
    assert plain.hits["/ok/1"] == 1 and plain.hits["/ok/2?x=1"] == 1 and plain.hits["/404/3"] == 1  # 404: not retried


def test_explicit_proxy_skips_no_proxy_hosts(origins, proxies, no_env_proxy):
    plain, _ = origins
    px = proxies()
    out = fetch({"proxy": px.url(), "no_proxy": ["localhost", "127.0.0.0/8"]}, [f"http://127.0.0.1:{plain.httpd.server_address[1]}/ok/1"])
    assert out["_reject_reason"].to_list() == [None]
    assert px.requests == [] and plain.hits["/ok/1"] == 1


def test_env_proxies_http_and_https_tunnel(origins, proxies, cert, no_env_proxy):
    plain, tls = origins
    px = proxies()
    no_env_proxy.setenv("HTTP_PROXY", px.url())
    no_env_proxy.setenv("https_proxy", f"127.0.0.1:{px.port}")  # host:port without a scheme, as curl accepts
    no_env_proxy.setenv("SSL_CERT_FILE", str(cert / "cert.pem"))
    tls_port = tls.server_address[1]
    urls = [f"http://{HOST}/ok/a", f"https://{HOST}:{tls_port}/ok/b", f"https://{HOST}:{tls_port}/missing",
            f"http://127.0.0.1:{plain.httpd.server_address[1]}/ok/c"]  # loopback: never proxied
    out = fetch({}, urls)
    assert out["_reject_reason"].to_list() == [None, None, "http_404", None]
    assert out["image_bytes"][1] == IMG
    assert sorted(r[:2] for r in px.requests) == sorted([
        ("GET", f"http://{HOST}/ok/a"), ("CONNECT", f"{HOST}:{tls_port}"), ("CONNECT", f"{HOST}:{tls_port}"),
    ])
    assert plain.hits["/ok/c"] == 1


def test_tunnel_tls_is_end_to_end(origins, proxies, no_env_proxy):
    # without the test CA the origin's certificate must fail verification through the tunnel
    _, tls = origins
    px = proxies()
    out = fetch({"proxy": px.url(), "retries": 0}, [f"https://{HOST}:{tls.server_address[1]}/ok/x"])
    assert out["_reject_reason"].to_list() == ["connection_error"]
    assert "CERTIFICATE_VERIFY_FAILED" in out["_reject_message"][0] or "certificate" in out["_reject_message"][0].lower()
    assert [r[0] for r in px.requests] == ["CONNECT"]


def test_proxy_auth_required_is_final(origins, proxies, cert, no_env_proxy):
    _, tls = origins
    px = proxies(user="alice", password="right")
    no_env_proxy.setenv("SSL_CERT_FILE", str(cert / "cert.pem"))
    out = fetch({"proxy": px.url("alice:wrong@"), "retries": 3},
                [f"http://{HOST}/ok/1", f"https://{HOST}:{tls.server_address[1]}/ok/2"])
    assert out["_reject_reason"].to_list() == ["http_4xx", "http_4xx"]
    msgs = out["_reject_message"].to_list()
    assert "407" in msgs[0] and "proxy refused the tunnel: 407" in msgs[1]
    assert len(px.requests) == 2  # 407 is not retried
    assert all("wrong" not in m for m in msgs)


def test_unreachable_proxy_names_it_without_credentials(no_env_proxy):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    out = fetch({"proxy": f"http://bob:hunter2pw@127.0.0.1:{port}", "retries": 0}, [f"http://{HOST}/ok/1"])
    assert out["_reject_reason"].to_list() == ["connection_error"]
    msg = out["_reject_message"][0]
    assert f"via proxy 127.0.0.1:{port}" in msg and "hunter2pw" not in msg


def test_env_proxy_selection_and_no_proxy_matching(no_env_proxy):
    from urllib.parse import urlsplit as sp

    from mmprep.media.fetch import Fetcher

    no_env_proxy.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    no_env_proxy.setenv("HTTPS_PROXY", "http://u:p@proxy.corp:3129")
    no_env_proxy.setenv("NO_PROXY", "internal.corp, .cdn.example,10.0.0.0/8,special.example:8443")
    f = Fetcher()

    def via(url):
        p = f.proxy_for(sp(url))
        return None if p is None else f"{p.hostname}:{p.port}"

    assert via("http://images.example.com/a.jpg") == "proxy.corp:3128"
    assert via("https://images.example.com/a.jpg") == "proxy.corp:3129"
    assert via("http://internal.corp/a") is None and via("http://a.internal.corp/a") is None
    assert via("http://xinternal.corp/a") == "proxy.corp:3128"  # a suffix match is on a label boundary
    assert via("https://img.cdn.example/a") is None and via("https://cdn.example/a") is None
    assert via("http://10.1.2.3/a") is None and via("http://11.1.2.3/a") == "proxy.corp:3128"
    assert via("https://special.example:8443/a") is None and via("https://special.example/a") == "proxy.corp:3129"
    assert via("http://localhost:9000/a") is None and via("http://127.0.0.1/a") is None and via("http://[::1]:80/a") is None
    assert Fetcher(proxy="none").proxy_for(sp("http://images.example.com/a")) is None
    no_env_proxy.setenv("NO_PROXY", "*")
    assert Fetcher().proxy_for(sp("http://images.example.com/a")) is None
    no_env_proxy.setenv("NO_PROXY", "")
    no_env_proxy.setenv("HTTP_PROXY", "socks5://proxy.corp:1080")
    out = MediaStage(MediaOptions(retries=0), Context()).process(pl.DataFrame({"key": ["k"], "image_path": ["http://images.example.com/a.jpg"]}))
    assert out["_reject_reason"].to_list() == ["unsupported_url"] and "not an http:// proxy" in out["_reject_message"][0]


def test_proxy_option_checked_and_masked(tmp_path):
    pl.DataFrame({"image_path": ["x"]}).write_parquet(tmp_path / "t.parquet")
    doc = {
        "datasets": [{"name": "d", "source": {"type": "parquet", "path": "t.parquet"}}],
        "media": {"proxy": "socks5://proxy:1080"},
        "write": [{"type": "parquet", "path": "pq"}],
    }
    with pytest.raises(ConfigError, match="media.proxy"):
        Pipeline.from_dict(doc, base_dir=tmp_path)
    o = MediaOptions(proxy="http://bob:hunter2pw@proxy.corp:3128")
    assert "hunter2pw" not in json.dumps(o.model_dump(mode="json"))
    assert o.model_dump(mode="json", context={"secrets": "keep"})["proxy"] == "http://bob:hunter2pw@proxy.corp:3128"
