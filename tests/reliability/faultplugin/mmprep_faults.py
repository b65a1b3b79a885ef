"""Test-only mmprep plugin: components that fail on purpose (installed by tests/reliability/conftest.py).

* formatter ``fail-on-key``: raises RuntimeError in a unit holding one of ``keys``.
* formatter ``crash-once``: the first process that sees ``key`` dies (os._exit) after writing
  ``marker``; later attempts pass (a lost worker that Ray retries).
* writer ``enospc``: writes each row's caption to ``part-<unit>.bin`` in small chunks through a
  byte budget shared by the process (``MMPREP_TEST_DISK_BUDGET`` bytes, read at write time);
  past it raises ``OSError(ENOSPC)`` like a full disk.
* encoder ``pid-probe``: a deterministic "embedding" of the caption (its length and byte sum)
  plus, when ``pid_column`` is set, the pid of the process that encoded and set it up (where
  encoders ran: Ray encoder actors vs unit actors).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import polars as pl
from pydantic import Field

from mmprep import Encoder, Formatter, Options, UnitInfo, Writer, WriterOptions, hookimpl


class FailOnKey(Formatter):
    """Test only: raise in units holding one of the keys."""

    name = "fail-on-key"

    class Options(Options):
        keys: list[str] = Field(default_factory=list, description="keys whose unit fails")

    def format(self, df: pl.DataFrame) -> pl.DataFrame:
        bad = set(df["key"].to_list()) & set(self.options.keys)
        if bad:
            raise RuntimeError(f"injected failure for key {sorted(bad)[0]}")
        return df


class CrashOnce(Formatter):
    """Test only: kill the worker process the first time a key is seen."""

    name = "crash-once"

    class Options(Options):
        key: str = Field(description="key that triggers the crash")
        marker: str = Field(description="file created before the crash (exists = crash already happened)")

    def format(self, df: pl.DataFrame) -> pl.DataFrame:
        if self.options.key in set(df["key"].to_list()) and not os.path.exists(self.options.marker):
            Path(self.options.marker).write_text(str(os.getpid()))
            os._exit(137)
        return df


_USED = {"bytes": 0}


class Enospc(Writer):
    """Test only: a writer on a disk that fills up after MMPREP_TEST_DISK_BUDGET bytes."""

    name = "enospc"

    class Options(WriterOptions):
        chunk: int = Field(default=64, description="bytes per write call")

    def write_unit(self, df: pl.DataFrame, unit: UnitInfo, staging: Path) -> dict:
        budget = int(os.environ.get("MMPREP_TEST_DISK_BUDGET", "-1"))
        path = staging / f"part-{unit.id}.bin"
        data = "\n".join(df["caption"].to_list()).encode()
        with open(path, "wb") as fh:
            for i in range(0, len(data), self.options.chunk):
                piece = data[i : i + self.options.chunk]
                if budget >= 0 and _USED["bytes"] + len(piece) > budget:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
                fh.write(piece)
                _USED["bytes"] += len(piece)
        return {"bytes": len(data)}

    def finalize(self, root: Path, records: list, manifest: dict) -> dict:
        return {"parts": len(list(root.glob("part-*.bin")))}

    def verify(self, root: Path, manifest: dict) -> list[str]:
        return []


class PidProbe(Encoder):
    """Test encoder: caption length and byte sum, and which process encoded (pid_column)."""

    name = "pid-probe"

    class Options(Options):
        pid_column: str | None = None

    def setup(self, device: str) -> None:
        self.setup_pid = os.getpid()
        self.n = 0

    def encode(self, df: pl.DataFrame) -> pl.DataFrame:
        self.n += df.height
        cols = [pl.col("caption").str.len_bytes().cast(pl.Int64).alias("probe_len")]
        if self.options.pid_column:
            cols += [pl.lit(os.getpid()).alias(self.options.pid_column), pl.lit(self.setup_pid).alias("setup_pid")]
        return df.with_columns(cols)

    def stats(self) -> dict:
        return {"encoded": getattr(self, "n", 0)}

    def identity(self) -> dict:
        return {"model": "pid-probe"}

    def output_columns(self) -> dict:
        return {"probe_len": {"dtype": "int64", "shape": []}}


@hookimpl
def register_encoders(register):
    register(PidProbe)


@hookimpl
def register_formatters(register):
    register(FailOnKey)
    register(CrashOnce)


@hookimpl
def register_writers(register):
    register(Enospc)
