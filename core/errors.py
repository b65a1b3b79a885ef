"""Error types with the exit codes the CLI maps them to."""

from __future__ import annotations


class MmprepError(Exception):
    """Base of mmprep's errors; ``exit_code`` is what the CLI returns."""

    exit_code = 1


class ConfigError(MmprepError):
    """An invalid pipeline: one or more ``path: message`` errors, found before any work."""

    exit_code = 2

    def __init__(self, errors: list[str] | str, source: str | None = None):
        self.errors = [errors] if isinstance(errors, str) else list(errors)
        self.source = source
        super().__init__(self.render())

    def render(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return "\n".join(prefix + e for e in self.errors)

    def with_prefix(self, path: str) -> "ConfigError":
        return ConfigError([f"{path}.{e}" if path and not e.startswith("[") else f"{path}{e}" for e in self.errors], self.source)


class PluginError(MmprepError):
    """A plugin failed to load or conflicts with another."""

    exit_code = 3


class ResumeError(MmprepError):
    """The output directory holds a run of a different pipeline."""

    exit_code = 4


class UnitError(MmprepError):
    """A work unit failed (not a bad sample: those are rejected and counted)."""

    exit_code = 1
