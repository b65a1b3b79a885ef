"""Fetching image bytes: local files, HTTP(S) and any fsspec URL, with retries.

HTTP(S) uses the standard library's ``http.client`` directly, which gives separate connect and
read timeouts, a whole-attempt deadline, a size cap while streaming, ``Retry-After`` and exact
status codes without another dependency. Other URLs (``s3://``, ``gs://``, ``memory://``,
``hf://`` ...) go through fsspec with the configured ``storage_options``.

Every failure ends as a :class:`FetchError` with a rejection reason (see ``REASONS`` in
:mod:`mmprep.media`). Retryable failures (5xx, 408, 429, timeouts, connection errors) are
retried with exponential backoff and full jitter; 429/503 honour ``Retry-After``; 403 and 404
(and every other 4xx) are final at once.

Connections are kept alive (``keep_alive``): idle ones are pooled per (scheme, host, port, proxy),
at most ``per_host`` each, for the most recently used hosts; one the server closed while idle is
noticed (its socket is readable) and replaced before use. Small error and redirect bodies are
read so that their connection stays usable.

Proxies (``proxy``): ``env`` (the default) honours ``HTTP_PROXY``/``HTTPS_PROXY``/``NO_PROXY``
(either case) as curl and requests do, except that loopback hosts are never proxied; ``none``
connects directly; an ``http://[user:password@]host[:port]`` URL proxies every HTTP(S) host not
in ``no_proxy``. HTTP goes through the proxy as absolute-form requests, HTTPS through a
``CONNECT`` tunnel (TLS is end to end; a TLS-intercepting proxy's CA is trusted through
``SSL_CERT_FILE``). Proxy credentials go out as ``Proxy-Authorization`` and never into messages.
"""

from __future__ import annotations

import base64
import email.utils
import http.client
import ipaddress
import random
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

from ..storage import redact

#: Reasons a later retry may fix (``mmprep run --retry-failed`` redoes units that have them).
RETRYABLE_REASONS = frozenset({"http_5xx", "http_429", "timeout", "connection_error", "too_many_retries"})


class FetchError(Exception):
    """A failed fetch: ``reason`` (rejection reason), ``message`` (human readable), ``retryable``."""

    def __init__(self, reason: str, message: str, retryable: bool = False, retry_after: float | None = None):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after


@dataclass
class FetchStats:
    attempts: int = 0
    retries: int = 0
    waited: float = 0.0


@dataclass
class Fetcher:
    """Fetches bytes for one worker process. Thread-safe; holds per-host semaphores."""

    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    total_timeout: float = 120.0
    retries: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 60.0
    user_agent: str = "mmprep"
    headers: dict[str, str] = field(default_factory=dict)
    max_bytes: int = 64 * 1024 * 1024
    per_host: int = 8
    storage_options: dict[str, Any] = field(default_factory=dict)
    proxy: str = "env"
    no_proxy: tuple[str, ...] = ()
    keep_alive: bool = True
    scrub: Callable[[str], str] = redact
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._fs: dict[str, Any] = {}
        self._ssl = None
        self._idle: dict[tuple, list] = {}  # keep-alive pool (see _checkout)
        if self.proxy == "env":
            import urllib.request

            self._env_proxies = urllib.request.getproxies_environment()
        elif self.proxy != "none":
            check_proxy_url(self.proxy)

    # -- public ------------------------------------------------------------------------
    def fetch(self, url: str, stats: FetchStats | None = None) -> bytes:
        """Bytes of ``url`` (local path or URL); raises :class:`FetchError`."""
        stats = stats if stats is not None else FetchStats()
        if "://" not in url:
            return self._local(url)
        scheme = url.split("://", 1)[0].lower()
        if scheme == "file":
            return self._local(url[len("file://"):])
        host = urlsplit(url).netloc or scheme
        once = self._http_once if scheme in ("http", "https") else self._fsspec_once
        attempt = 0
        last: FetchError | None = None
        while True:
            stats.attempts += 1
            try:
                with self._host(host):
                    return once(url)
            except FetchError as e:
                last = e
            if not last.retryable:
                raise last
            if attempt >= self.retries:
                if last.reason == "http_429":
                    raise FetchError("too_many_retries", f"{last.message} (gave up after {attempt + 1} attempts)")
                raise FetchError(last.reason, f"{last.message} (after {attempt + 1} attempts)")
            if last.retry_after is not None:
                if last.retry_after > self.max_retry_after:
                    raise FetchError(
                        "too_many_retries",
                        f"{last.message}: Retry-After {last.retry_after:.0f}s exceeds max_retry_after {self.max_retry_after:.0f}s",
                    )
                wait = last.retry_after
            else:
                wait = random.uniform(0, min(self.max_backoff, self.backoff * (2**attempt)))
            stats.retries += 1
            stats.waited += wait
            if wait > 0:
                self.sleep(wait)
            attempt += 1

    # -- local -------------------------------------------------------------------------
    def _local(self, path: str) -> bytes:
        try:
            with open(path, "rb") as fh:
                data = fh.read(self.max_bytes + 1)
        except (FileNotFoundError, NotADirectoryError):
            raise FetchError("not_found", f"no such file: {self.scrub(path)}") from None
        except IsADirectoryError:
            raise FetchError("not_found", f"is a directory: {self.scrub(path)}") from None
        except PermissionError:
            raise FetchError("permission_denied", f"permission denied: {self.scrub(path)}") from None
        except OSError as e:
            raise FetchError("io_error", f"{type(e).__name__}: {self.scrub(str(e))}") from None
        if len(data) > self.max_bytes:
            raise FetchError("too_large", f"file larger than max_bytes={self.max_bytes}")
        return data

    # -- per host limit ----------------------------------------------------------------
    def _host(self, host: str) -> threading.BoundedSemaphore:
        with self._lock:
            sem = self._hosts.get(host)
            if sem is None:
                sem = self._hosts[host] = threading.BoundedSemaphore(self.per_host)
            return sem

    # -- proxies -----------------------------------------------------------------------
    def proxy_for(self, parts: SplitResult) -> SplitResult | None:
        """The proxy to reach ``parts`` (a split http(s) URL) through, or None for a direct connection."""
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
        if self.proxy == "none":
            return None
        if self.proxy != "env":
            return None if _host_matches(host, port, self.no_proxy) else urlsplit(self.proxy)
        proxies = self._env_proxies
        url = proxies.get(parts.scheme.lower())
        if not url or _is_loopback(host) or _host_matches(host, port, _no_proxy_list(proxies.get("no", ""))):
            return None
        if "://" not in url:
            url = "http://" + url  # HTTP_PROXY=host:port, as curl accepts
        proxy = urlsplit(url)
        if proxy.scheme.lower() != "http" or not proxy.hostname:
            raise FetchError(
                "unsupported_url", f"{self.scrub(parts.geturl())}: {parts.scheme.upper()}_PROXY={self.scrub(url)} is not an http:// proxy"
            )
        return proxy

    # -- HTTP --------------------------------------------------------------------------
    def _route(self, parts: SplitResult, https: bool, port: int) -> tuple[tuple, str, dict[str, str], str, SplitResult | None]:
        """How to reach ``parts``: the connection-pool key, the request target, the extra headers,
        the proxy (None: direct) and, for messages, a note naming the proxy."""
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        proxy = self.proxy_for(parts)
        if proxy is None:
            return (https, parts.hostname, port, None), target, {}, "", None
        via = f" (via proxy {proxy.hostname}:{proxy.port or 80})"
        key = (https, parts.hostname, port, (proxy.hostname, proxy.port, proxy.username, proxy.password))
        if https:  # CONNECT tunnel: TLS, and the certificate check, is with the origin
            return key, target, {}, via, proxy
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = host if parts.port is None else f"{host}:{parts.port}"
        key = (False, None, None, key[3])  # one proxy connection serves every http:// host
        return key, f"http://{netloc}{target}", _proxy_auth(proxy), via, proxy  # absolute-form request

    def _open(self, parts: SplitResult, https: bool, port: int, proxy: SplitResult | None, shown: str, via: str):
        """A new, connected connection for :meth:`_route`'s answer."""
        if https and self._ssl is None:
            self._ssl = ssl.create_default_context()
        try:
            host, hport = (parts.hostname, port) if proxy is None else (proxy.hostname, proxy.port or 80)
            if https:
                conn = http.client.HTTPSConnection(host, hport, timeout=self.connect_timeout, context=self._ssl)
                if proxy is not None:
                    conn.set_tunnel(parts.hostname, port, headers=_proxy_auth(proxy))
            else:
                conn = http.client.HTTPConnection(host, hport, timeout=self.connect_timeout)
        except Exception as e:  # bad host name etc.
            raise FetchError("connection_error", f"{shown}: {type(e).__name__}") from None
        try:
            conn.connect()
        except (socket.timeout, TimeoutError):
            conn.close()
            raise FetchError("timeout", f"{shown}: connect timed out after {self.connect_timeout:g}s{via}", retryable=True) from None
        except socket.gaierror as e:
            conn.close()
            raise FetchError("connection_error", f"{shown}: cannot resolve host ({e.strerror or e}){via}") from None
        except OSError as e:
            conn.close()
            raise _connect_error(shown, e, via) from None
        return conn

    # -- keep-alive pool: idle connections per (scheme, host, port, proxy), shared by the threads
    def _checkout(self, key: tuple):
        with self._lock:
            idle = self._idle.get(key)
            while idle:
                conn = idle.pop()
                if _reusable(conn):
                    return conn
                conn.close()
        return None

    def _checkin(self, key: tuple, conn) -> None:
        with self._lock:
            idle = self._idle.pop(key, None) or []
            self._idle[key] = idle  # most recently used last
            if len(idle) < self.per_host:
                idle.append(conn)
                conn = None
            while len(self._idle) > _POOL_HOSTS:  # forget the least recently used host
                for c in self._idle.pop(next(iter(self._idle))):
                    c.close()
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close the idle keep-alive connections."""
        with self._lock:
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for c in conns:
                c.close()

    def _http_once(self, url: str) -> bytes:
        deadline = time.monotonic() + self.total_timeout
        shown = self.scrub(url)
        for _ in range(6):  # the request plus up to 5 redirects
            parts = urlsplit(url)
            https = parts.scheme.lower() == "https"
            port = parts.port or (443 if https else 80)
            key, target, extra, via, proxy = self._route(parts, https, port)
            conn = self._checkout(key) if self.keep_alive else None
            if conn is None:
                conn = self._open(parts, https, port, proxy, shown, via)
            keep = False  # whether the connection goes back to the pool
            resp = None
            try:
                # the socket itself: a "Connection: close" response hands it to the response, conn.sock is None then
                sock = conn.sock
                sock.settimeout(max(0.001, min(self.read_timeout, deadline - time.monotonic())))
                headers = {"User-Agent": self.user_agent, "Accept": "image/*,*/*;q=0.8", **extra, **self.headers}
                if not self.keep_alive:
                    headers["Connection"] = "close"
                if parts.username or parts.password:
                    cred = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
                    headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
                try:
                    conn.request("GET", target, headers=headers)
                    resp = conn.getresponse()
                except (socket.timeout, TimeoutError):
                    raise FetchError("timeout", f"{shown}: no response within {self.read_timeout:g}s", retryable=True) from None
                except (http.client.HTTPException, OSError) as e:
                    raise FetchError("connection_error", f"{shown}: {type(e).__name__}: {_oserr(e)}", retryable=True) from None
                status = resp.status
                if status != 200:
                    keep = self.keep_alive and _drain(resp)  # a small error/redirect body: keep the connection
                if status in (301, 302, 303, 307, 308):
                    loc = resp.getheader("Location")
                    if not loc:
                        raise FetchError("http_3xx", f"{shown}: HTTP {status} without Location")
                    url = urljoin(url, loc)
                    shown = self.scrub(url)
                    continue
                if status >= 400:
                    retry_after = _retry_after(resp.getheader("Retry-After")) if status in (429, 503) else None
                    msg = f"{shown}: HTTP {status} {resp.reason}"
                    if status == 404 or status == 410:
                        raise FetchError("http_404", msg)
                    if status == 429:
                        raise FetchError("http_429", msg, retryable=True, retry_after=retry_after)
                    if status == 408:
                        raise FetchError("timeout", msg, retryable=True)
                    if status >= 500:
                        raise FetchError("http_5xx", msg, retryable=True, retry_after=retry_after)
                    raise FetchError("http_4xx", msg)
                if status != 200:
                    raise FetchError("http_status", f"{shown}: unexpected HTTP {status}")
                length = resp.getheader("Content-Length")
                if length is not None and length.isdigit() and int(length) > self.max_bytes:
                    raise FetchError("too_large", f"{shown}: Content-Length {length} exceeds max_bytes={self.max_bytes}")
                body = self._read_body(resp, sock, deadline, shown, int(length) if length and length.isdigit() else None)
                keep = self.keep_alive and not resp.will_close
                return body
            finally:
                if resp is not None:
                    resp.close()  # after a "Connection: close" response it holds the socket
                if keep:
                    self._checkin(key, conn)
                else:
                    conn.close()
        raise FetchError("http_3xx", f"{shown}: too many redirects")

    def _read_body(self, resp, sock: socket.socket, deadline: float, shown: str, length: int | None) -> bytes:
        chunks: list[bytes] = []
        got = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FetchError("timeout", f"{shown}: download exceeded total_timeout {self.total_timeout:g}s", retryable=True)
            try:
                sock.settimeout(max(0.001, min(self.read_timeout, left)))
                chunk = resp.read1(1 << 16)
            except (socket.timeout, TimeoutError):
                raise FetchError("timeout", f"{shown}: read timed out after {got} bytes", retryable=True) from None
            except http.client.IncompleteRead as e:
                raise FetchError("connection_error", f"{shown}: truncated body ({got + len(e.partial)} of {length} bytes)", retryable=True) from None
            except (http.client.HTTPException, OSError) as e:
                raise FetchError("connection_error", f"{shown}: {type(e).__name__} after {got} bytes: {_oserr(e)}", retryable=True) from None
            if not chunk:
                break
            got += len(chunk)
            if got > self.max_bytes:
                raise FetchError("too_large", f"{shown}: body exceeds max_bytes={self.max_bytes}")
            chunks.append(chunk)
        if length is not None and got < length:
            raise FetchError("connection_error", f"{shown}: truncated body ({got} of {length} bytes)", retryable=True)
        return b"".join(chunks)

    # -- fsspec ------------------------------------------------------------------------
    def _filesystem(self, protocol: str):
        with self._lock:
            fs = self._fs.get(protocol)
            if fs is None:
                import fsspec

                fs = self._fs[protocol] = fsspec.filesystem(protocol, **self.storage_options)
            return fs

    def _fsspec_once(self, url: str) -> bytes:
        shown = self.scrub(url)
        protocol = url.split("://", 1)[0]
        try:
            fs = self._filesystem(protocol)
        except (ImportError, ValueError) as e:
            raise FetchError("unsupported_url", f"{shown}: {type(e).__name__}: {self.scrub(str(e))}") from None
        except Exception as e:
            raise FetchError("connection_error", f"{shown}: {type(e).__name__}: {self.scrub(str(e))}", retryable=True) from None
        path = fs._strip_protocol(url)
        try:
            # one ranged read: never more than max_bytes + 1 bytes in memory, no extra HEAD
            data = fs.cat_file(path, start=0, end=self.max_bytes + 1)
            if len(data) > self.max_bytes:
                raise FetchError("too_large", f"{shown}: larger than max_bytes={self.max_bytes}")
            return data
        except FetchError:
            raise
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise FetchError("not_found", f"{shown}: not found") from None
        except PermissionError as e:
            raise FetchError("permission_denied", f"{shown}: permission denied ({self.scrub(str(e))[:200]})") from None
        except (TimeoutError, socket.timeout) as e:
            raise FetchError("timeout", f"{shown}: {type(e).__name__}", retryable=True) from None
        except Exception as e:
            raise FetchError("connection_error", f"{shown}: {type(e).__name__}: {self.scrub(str(e))[:300]}", retryable=True) from None


#: Hosts whose idle connections the keep-alive pool keeps (each up to ``per_host`` of them).
_POOL_HOSTS = 64
#: Largest error or redirect body read to keep its connection (a bigger one closes it).
_DRAIN_BYTES = 64 * 1024


def _reusable(conn) -> bool:
    """An idle pooled connection is reusable when its socket has nothing to read: a readable idle
    socket means the server closed it (EOF) or sent something unasked, either way unusable.
    (poll, not select: select() cannot take descriptors above 1023.)"""
    sock = conn.sock
    if sock is None:
        return False
    try:
        if hasattr(select, "poll"):
            p = select.poll()
            p.register(sock, select.POLLIN | select.POLLPRI)
            return not p.poll(0)
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return False
    return not readable


def _drain(resp) -> bool:
    """Read a non-200 response's small body so that its connection can serve the next request;
    False when the body is too big or unbounded, or reading it fails (the connection is closed)."""
    if resp.will_close:
        return False
    length = resp.getheader("Content-Length")
    if resp.chunked or length is None or not length.isdigit() or int(length) > _DRAIN_BYTES:
        return False
    try:
        resp.read()
    except (http.client.HTTPException, OSError):
        return False
    return True


def check_proxy_url(url: str) -> None:
    """Raise ValueError unless ``url`` is an ``http://[user:password@]host[:port]`` proxy URL."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ValueError(f"must be 'env', 'none' or an http://[user:password@]host[:port] proxy URL, not {redact(url)!r}")
    parts.port  # noqa: B018 -- raises ValueError on a bad port


def _proxy_auth(proxy: SplitResult) -> dict[str, str]:
    if proxy.username is None and proxy.password is None:
        return {}
    cred = f"{unquote(proxy.username or '')}:{unquote(proxy.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(cred).decode()}


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _no_proxy_list(value: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in value.replace(" ", ",").split(",") if x.strip())


def _host_matches(host: str, port: int, patterns: tuple[str, ...] | list[str]) -> bool:
    """NO_PROXY matching as curl does it: ``*``, exact hosts, domain suffixes (``.example.com``
    or ``example.com`` both match ``a.example.com``), optional ``:port``, and IP networks (CIDR)."""
    for pat in patterns:
        pat = pat.strip().lower()
        if not pat:
            continue
        if pat == "*":
            return True
        want_port = None
        if pat.count(":") == 1 and not pat.startswith("["):
            pat, _, p = pat.partition(":")
            want_port = int(p) if p.isdigit() else None
        if want_port is not None and want_port != port:
            continue
        pat = pat.strip("[]")
        if "/" in pat:
            try:
                if ipaddress.ip_address(host) in ipaddress.ip_network(pat, strict=False):
                    return True
            except ValueError:
                pass
            continue
        pat = pat.lstrip(".").lstrip("*.")
        if host == pat or host.endswith("." + pat):
            return True
    return False


def _connect_error(shown: str, e: OSError, via: str) -> FetchError:
    """A failed connect, or a proxy refusing the CONNECT tunnel (its status decides)."""
    msg = str(e)
    if msg.startswith("Tunnel connection failed"):
        code = next((int(w) for w in msg.split() if w.isdigit() and len(w) == 3), 0)
        text = f"{shown}: proxy refused the tunnel: {msg.split(':', 1)[-1].strip()}"
        if code == 429 or code >= 500:
            return FetchError("http_5xx" if code >= 500 else "http_429", text, retryable=True)
        return FetchError("http_4xx", text)
    return FetchError("connection_error", f"{shown}: {type(e).__name__}: {e.strerror or e}{via}", retryable=True)


def _oserr(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        dt = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, dt.timestamp() - time.time())
