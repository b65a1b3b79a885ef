"""HTTP(S) fetch throughput: mmprep's fetcher with keep-alive, without it, and img2dataset's way
(``urllib.request.urlopen`` per URL), side by side in one run against one loopback server.

The server runs in its own process (HTTP/1.1, keep-alive, "Connection: close" echoed as nginx
does) and serves ~60 KB JPEGs. ``--conn-delay-ms`` makes it wait that long on every new TCP
connection, standing in for the round trips a real handshake costs (TCP + TLS 1.3 = 2 RTT), which
loopback does not have. Only fetching is timed: no decode, no resize.

    .venv/bin/python bench/http_fetch.py --count 3000 --threads 16
"""

from __future__ import annotations

import argparse
import datetime
import io
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SERVER = r"""
import ssl, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
bodies = [open(p, "rb").read() for p in sys.argv[4:]]
delay = float(sys.argv[2]) / 1000
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def setup(self):
        if delay: time.sleep(delay)
        super().setup()
    def do_GET(self):
        body = bodies[int(self.path.rsplit("/", 1)[-1]) % len(bodies)]
        self.send_response(200)
        self.send_header("Content-Type", "image/jpeg")
        self.send_header("Content-Length", str(len(body)))
        if self.headers.get("Connection", "").lower() == "close":
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)
class S(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512
srv = S(("127.0.0.1", 0), H)
if sys.argv[1] != "-":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[3])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
threading.Thread(target=srv.serve_forever, daemon=True).start()
print(srv.server_address[1], flush=True)
sys.stdin.read()
"""


def make_cert(d: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return d / "cert.pem", d / "key.pem"


def make_images(d: Path, n: int = 8) -> list[Path]:
    import numpy as np
    from PIL import Image

    out = []
    for i in range(n):
        r = np.random.default_rng(i)
        a = (np.linspace(0, 255, 480 * 640 * 3).reshape(480, 640, 3) + r.integers(0, 40, (480, 640, 3))).clip(0, 255)
        buf = io.BytesIO()
        Image.fromarray(a.astype("uint8")).save(buf, "JPEG", quality=85)
        p = d / f"{i}.jpg"
        p.write_bytes(buf.getvalue())
        out.append(p)
    return out


def run_clients(base: str, count: int, threads: int) -> dict[str, float]:
    from mmprep.media.fetch import Fetcher

    urls = [f"{base}/img/{i}" for i in range(count)]

    def timed(fn) -> float:
        with ThreadPoolExecutor(threads) as pool:
            t = time.perf_counter()
            sizes = list(pool.map(fn, urls))
            dt = time.perf_counter() - t
        assert all(s > 10_000 for s in sizes), "a fetch failed"
        return count / dt

    res = {}
    keep = Fetcher(retries=0, per_host=threads, keep_alive=True, proxy="none")
    res["mmprep keep-alive"] = timed(lambda u: len(keep.fetch(u)))
    keep.close()
    close = Fetcher(retries=0, per_host=threads, keep_alive=False, proxy="none")
    res["mmprep, a connection per image"] = timed(lambda u: len(close.fetch(u)))
    import ssl

    ctx = ssl.create_default_context()

    def urlopen(u: str) -> int:  # img2dataset's downloader: one urlopen per URL
        req = urllib.request.Request(u, headers={"User-Agent": "img2dataset"})
        with urllib.request.urlopen(req, timeout=10, context=ctx if u.startswith("https") else None) as r:
            return len(r.read())

    res["urllib.urlopen per URL (img2dataset)"] = timed(urlopen)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--delays", type=float, nargs="+", default=[0.0, 20.0], help="per-connection delays (ms) to run")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="mmprep-httpbench-"))
    cert, key = make_cert(tmp)
    os.environ["SSL_CERT_FILE"] = str(cert)  # trusted by both clients' default contexts
    imgs = make_images(tmp)
    print(f"{args.count} GETs of ~{sum(p.stat().st_size for p in imgs) // len(imgs) // 1000} KB JPEGs, {args.threads} threads, "
          f"loopback, server in its own process; images/s (ratio to urllib.urlopen per URL)\n")
    print("| scheme | added per-connection delay | mmprep keep-alive | mmprep, a connection per image | urllib.urlopen per URL (img2dataset) |")
    print("|---|---|---|---|---|")
    for scheme in ("https", "http"):
        for delay in args.delays:
            srv = subprocess.Popen([sys.executable, "-c", SERVER, str(cert) if scheme == "https" else "-", str(delay), str(key), *map(str, imgs)],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            port = int(srv.stdout.readline())
            try:
                r = run_clients(f"{scheme}://127.0.0.1:{port}", args.count, args.threads)
            finally:
                srv.stdin.close()
                srv.wait()
            base = r["urllib.urlopen per URL (img2dataset)"]
            cells = " | ".join(f"{v:,.0f} ({v / base:.2f}×)" for v in r.values())
            print(f"| {scheme} | {delay:g} ms | {cells} |", flush=True)


if __name__ == "__main__":
    main()
