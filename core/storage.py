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
