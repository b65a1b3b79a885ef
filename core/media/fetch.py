"""Fetching image bytes: local files, HTTP(S) and any fsspec URL, with retries.

HTTP(S) uses the standard library's ``http.client`` directly, which gives separate connect and
read timeouts, a whole-attempt deadline, a size cap while streaming, ``Retry-After`` and exact
status codes without another dependency. Other URLs (``s3://``, ``gs://``, ``memory://``,
``hf://`` ...) go through fsspec with the configured ``storage_options``.

Every failure ends as a :class:`FetchError` with a rejection reason (see ``REASONS`` in
:mod:`mmprep.media`). Retryable failures (5xx, 408, 429, timeouts, connection errors) are
retried with exponential backoff and full jitter; 429/503 honour ``Retry-After``; 403 and 404
(and every other 4xx) are final at once.
"""

from __future__ import annotations

import email.utils
import http.client
import random
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import urljoin, urlsplit

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
    scrub: Callable[[str], str] = redact
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._hosts: dict[str, threading.BoundedSemaphore] = {}
        self._fs: dict[str, Any] = {}
        self._ssl = None

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

    # -- HTTP --------------------------------------------------------------------------
    def _http_once(self, url: str) -> bytes:
        deadline = time.monotonic() + self.total_timeout
        shown = self.scrub(url)
        for _ in range(6):  # the request plus up to 5 redirects
            parts = urlsplit(url)
            https = parts.scheme.lower() == "https"
            port = parts.port or (443 if https else 80)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            try:
                if https:
                    if self._ssl is None:
                        self._ssl = ssl.create_default_context()
                    conn = http.client.HTTPSConnection(parts.hostname, port, timeout=self.connect_timeout, context=self._ssl)
                else:
                    conn = http.client.HTTPConnection(parts.hostname, port, timeout=self.connect_timeout)
            except Exception as e:  # bad host name etc.
                raise FetchError("connection_error", f"{shown}: {type(e).__name__}") from None
            try:
                try:
                    conn.connect()
                except (socket.timeout, TimeoutError):
                    raise FetchError("timeout", f"{shown}: connect timed out after {self.connect_timeout:g}s", retryable=True) from None
                except socket.gaierror as e:
                    raise FetchError("connection_error", f"{shown}: cannot resolve host ({e.strerror or e})") from None
                except OSError as e:
                    raise FetchError("connection_error", f"{shown}: {type(e).__name__}: {e.strerror or e}", retryable=True) from None
                conn.sock.settimeout(max(0.001, min(self.read_timeout, deadline - time.monotonic())))
                headers = {"User-Agent": self.user_agent, "Accept": "image/*,*/*;q=0.8", "Connection": "close", **self.headers}
                if parts.username or parts.password:
                    import base64

                    cred = f"{parts.username or ''}:{parts.password or ''}".encode()
                    headers["Authorization"] = "Basic " + base64.b64encode(cred).decode()
                try:
                    conn.request("GET", target, headers=headers)
                    resp = conn.getresponse()
                except (socket.timeout, TimeoutError):
                    raise FetchError("timeout", f"{shown}: no response within {self.read_timeout:g}s", retryable=True) from None
                except (http.client.HTTPException, OSError) as e:
                    raise FetchError("connection_error", f"{shown}: {type(e).__name__}: {_oserr(e)}", retryable=True) from None
                status = resp.status
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
                return self._read_body(resp, conn, deadline, shown, int(length) if length and length.isdigit() else None)
            finally:
                conn.close()
        raise FetchError("http_3xx", f"{shown}: too many redirects")

    def _read_body(self, resp, conn, deadline: float, shown: str, length: int | None) -> bytes:
        chunks: list[bytes] = []
        got = 0
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise FetchError("timeout", f"{shown}: download exceeded total_timeout {self.total_timeout:g}s", retryable=True)
            try:
                conn.sock.settimeout(max(0.001, min(self.read_timeout, left)))
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
