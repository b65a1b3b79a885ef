"""Plugin discovery and the component registry.

Plugins come from the entry-point group ``mmprep``; the core's built-ins register through
the same hooks. Each entry point is loaded on its own, so one broken plugin is reported by
name (and can be disabled with ``MMPREP_DISABLE_PLUGINS``) instead of aborting discovery.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from . import hookspecs
from .component import KINDS, NAME_RE, Component
from .errors import PluginError

GROUP = "mmprep"
DISABLE_VAR = "MMPREP_DISABLE_PLUGINS"

#: First-party component names and the distribution that provides them, for hints.
FIRST_PARTY: dict[str, str] = {
    "mds": "mmprep-mds",
    "webdataset": "mmprep-webdataset",
    "vae": "mmprep-encoders",
    "clip-text": "mmprep-encoders",
    "t5": "mmprep-encoders",
    "llm-mean": "mmprep-encoders",
    "open-clip-text": "mmprep-encoders",
    "llava-*": "mmprep-llava",
}

HOOK_KIND = {
    "register_sources": "source",
    "register_filters": "filter",
    "register_formatters": "formatter",
    "register_encoders": "encoder",
    "register_writers": "writer",
}


@dataclass
class PluginInfo:
    name: str
    distribution: str | None = None
    version: str | None = None
    module: str | None = None
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "hooks": sorted(self.hooks),
            "components": {k: sorted(v) for k, v in sorted(self.components.items())},
        }


def first_party_hint(name: str) -> str | None:
    if name in FIRST_PARTY:
        return FIRST_PARTY[name]
    if name.startswith("llava"):
        return FIRST_PARTY["llava-*"]
    return None


class Registry:
    """All loaded plugins and their components, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager):
        self.pm = pm
        self.components: dict[str, dict[str, type[Component]]] = {k: {} for k in KINDS}
        self.providers: dict[tuple[str, str], str] = {}
        self.plugins: dict[str, PluginInfo] = {}

    # -- building -------------------------------------------------------------------
    def _collect(self) -> None:
        for plugin_name, plugin in self.pm.list_name_plugin():
            info = self.plugins.setdefault(plugin_name, PluginInfo(name=plugin_name))
            info.module = getattr(plugin, "__name__", type(plugin).__name__)
            info.hooks = [h.name for h in self.pm.get_hookcallers(plugin) or []]
            for hook, kind in HOOK_KIND.items():
                impl = getattr(plugin, hook, None)
                if impl is None or hook not in info.hooks:
                    continue

                def register(cls: type, _kind: str = kind, _plugin: str = plugin_name) -> None:
                    self._add(_kind, cls, _plugin)

                try:
                    impl(register=register)
                except PluginError:
                    raise
                except Exception as e:  # a plugin's own bug
                    raise PluginError(
                        f"plugin {plugin_name!r} ({info.distribution or 'built-in'}) failed in {hook}: "
                        f"{type(e).__name__}: {e}. Disable it with {DISABLE_VAR}={plugin_name}"
                    ) from e

    def _add(self, kind: str, cls: type, plugin: str) -> None:
        dist = self.plugins[plugin].distribution or "mmprep (built-in)"
        if not (isinstance(cls, type) and issubclass(cls, Component)) or cls.kind != kind:
            raise PluginError(f"plugin {plugin!r} ({dist}) registered {cls!r} as a {kind}, but it is not a mmprep {kind} class")
        if not NAME_RE.match(cls.name or ""):
            raise PluginError(f"plugin {plugin!r} ({dist}): {kind} class {cls.__qualname__} has invalid name {cls.name!r} (kebab-case required)")
        if not cls.summary():
            raise PluginError(f"plugin {plugin!r} ({dist}): {kind} {cls.name!r} has no docstring")
        existing = self.components[kind].get(cls.name)
        if existing is not None and existing is not cls:
            other = self.providers[(kind, cls.name)]
            other_dist = self.plugins[other].distribution or "mmprep (built-in)"
            raise PluginError(
                f"two {kind}s named {cls.name!r}: one from plugin {other!r} ({other_dist}), "
                f"one from plugin {plugin!r} ({dist}); disable one with {DISABLE_VAR}"
            )
        self.components[kind][cls.name] = cls
        self.providers[(kind, cls.name)] = plugin
        self.plugins[plugin].components.setdefault(kind, []).append(cls.name)

    # -- lookups --------------------------------------------------------------------
    def get(self, kind: str, name: str) -> type[Component]:
        try:
            return self.components[kind][name]
        except KeyError:
            raise KeyError(self.unknown_message(kind, name)) from None

    def unknown_message(self, kind: str, name: str) -> str:
        installed = ", ".join(sorted(self.components[kind])) or "none"
        msg = f"unknown {kind} {name!r}; installed {kind}s: {installed}"
        hint = first_party_hint(name)
        if hint:
            msg += f". {name!r} is provided by the distribution {hint}: pip install {hint}"
        return msg

    def provider(self, kind: str, name: str) -> PluginInfo:
        return self.plugins[self.providers[(kind, name)]]

    def versions(self) -> dict[str, str | None]:
        out = {}
        for info in self.plugins.values():
            out[info.distribution or info.name] = info.version
        return dict(sorted(out.items()))


def _disabled() -> set[str]:
    return {p.strip() for p in os.environ.get(DISABLE_VAR, "").split(",") if p.strip()}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


_REGISTRY: Registry | None = None


def load(refresh: bool = False) -> Registry:
    """Discover plugins (entry-point group ``mmprep``) and build the registry (cached)."""
    global _REGISTRY
    if _REGISTRY is not None and not refresh:
        return _REGISTRY
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    reg = Registry(pm)

    from .builtins import plugin as builtin_plugin

    pm.register(builtin_plugin, name="builtin")
    reg.plugins["builtin"] = PluginInfo(name="builtin", distribution="mmprep", version=_version("mmprep"))

    disabled = _disabled()
    seen: set[str] = set()
    for ep in sorted(metadata.entry_points(group=GROUP), key=lambda e: e.name):
        if ep.name in seen or ep.name in disabled:
            continue
        seen.add(ep.name)
        dist = ep.dist.name if ep.dist is not None else None
        try:
            module = ep.load()
        except Exception as e:
            raise PluginError(
                f"plugin {ep.name!r} from distribution {dist or 'unknown'} failed to import "
                f"({ep.value}): {type(e).__name__}: {e}. Disable it with {DISABLE_VAR}={ep.name}"
            ) from e
        try:
            pm.register(module, name=ep.name)
        except Exception as e:
            raise PluginError(
                f"plugin {ep.name!r} from distribution {dist or 'unknown'} could not be registered: {e}. "
                f"Disable it with {DISABLE_VAR}={ep.name}"
            ) from e
        reg.plugins[ep.name] = PluginInfo(name=ep.name, distribution=dist, version=_version(dist) if dist else None)
    reg._collect()
    _REGISTRY = reg
    return reg
