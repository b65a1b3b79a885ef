"""fsspec helpers: expanding paths and globs, opening URLs, telling local from remote.

Credentials live only in ``storage_options``; nothing here logs them, and
:func:`redact` strips user info from URLs before they reach messages or manifests.
"""

from __future__ import annotations

import re
from typing import Any

import fsspec

_MAGIC = re.compile(r"[*?\[]")
_USERINFO = re.compile(r"(://)[^/@]+@")


def is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def url_filesystem(url: str, storage_options: dict[str, Any] | None = None):
    """(filesystem, path-without-protocol) for any fsspec URL."""
    fs, p = fsspec.core.url_to_fs(url, **(storage_options or {}))
    return fs, p


def expand_paths(paths: list[str], storage_options: dict[str, Any] | None = None) -> list[str]:
    """Expand globs; keep existing files; return full URLs (local paths stay plain)."""
    out: list[str] = []
    for path in paths:
        fs, p = url_filesystem(path, storage_options)
        proto = path.split("://", 1)[0] + "://" if "://" in path and not path.startswith("file://") else ""
        if _MAGIC.search(p):
            matches = sorted(fs.glob(p))
        else:
            matches = [p] if fs.exists(p) else []
        for m in matches:
            if fs.isdir(m):
                continue
            out.append(proto + m if proto and not m.startswith(proto) else m)
    return out


def open_url(url: str, storage_options: dict[str, Any] | None = None, mode: str = "rb"):
    return fsspec.open(url, mode, **(storage_options or {}))


def redact(text: str) -> str:
    """Remove ``user:password@`` from URLs inside a message."""
    return _USERINFO.sub(r"\1***@", text)


#: Keys of ``storage_options`` (at any depth) whose values are credentials.
SECRET_KEYS = frozenset(
    {
        "key", "secret", "token", "password", "passwd", "session_token", "access_key", "secret_key",
        "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "account_key", "sas_token",
        "client_secret", "credentials", "api_key", "connection_string", "private_key",
        "authorization", "proxy-authorization", "cookie", "x-api-key",
    }
)
MASK = "***"


def mask_secrets(obj: Any) -> Any:
    """Copy of ``obj`` with the values of credential keys replaced by ``***``."""
    if isinstance(obj, dict):
        return {k: (MASK if str(k).lower() in SECRET_KEYS and v not in (None, "") else mask_secrets(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask_secrets(v) for v in obj]
    return obj


def secret_values(obj: Any) -> list[str]:
    """Every credential value in ``obj`` (to scrub from messages)."""
    out: list[str] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if str(k).lower() in SECRET_KEYS and isinstance(v, str) and len(v) >= 4 and v != MASK:
                out.append(v)
            else:
                out.extend(secret_values(v))
    elif isinstance(obj, list):
        for v in obj:
            out.extend(secret_values(v))
    return out


def mask_config(obj: Any) -> Any:
    """Copy of a pipeline document safe to store and log: every ``storage_options`` (and HTTP
    ``headers``) subtree has its credential values masked and every string has URL user info
    removed."""
    if isinstance(obj, dict):
        return {k: (mask_secrets(v) if k in ("storage_options", "headers") else mask_config(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask_config(v) for v in obj]
    if isinstance(obj, str):
        return redact(obj)
    return obj
