"""Component base classes: what a source, filter, formatter, encoder or writer is.

Every component is a class with

* ``name``: unique kebab-case name within its kind (``min-size``, ``llava-t2i``);
* a docstring whose first line is the one-line description ``mmprep components`` shows;
* ``Options``: a pydantic model (subclass of :class:`Options`) of its typed options with
  defaults; unknown keys are rejected, so a typo in the pipeline file is a config error.

A component is built from its validated options (``cls(options, context)``) once in the
driver (to validate and plan) and once per worker process (to run units). Construction
must be cheap and free of heavy imports; load models in :meth:`Encoder.setup`.

Rows are polars DataFrames using the shared column vocabulary (``key``, ``dataset``,
``image_path``, ``image_bytes``, ``width``, ``height``, ``caption`` ...). A stage that
rejects rows sets the reserved string column ``_reject_reason`` (null = keep) and may set
``_reject_message``; the engine counts, records and removes those rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import polars as pl
from pydantic import BaseModel, ConfigDict

REJECT_REASON = "_reject_reason"
REJECT_MESSAGE = "_reject_message"

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
KINDS = ("source", "filter", "formatter", "encoder", "writer")


class Options(BaseModel):
    """Base of every component's options: typed, with defaults, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", validate_default=True, use_attribute_docstrings=True)


@dataclass
class Context:
    """What a component knows about the run it is part of.

    ``base_dir``: the directory of the pipeline file (relative paths resolve against it);
    ``seed``: the run's seed; ``out``: the output directory (None while only validating);
    ``dataset``: the dataset name for per-dataset components (sources, filters).
    """

    base_dir: Path = field(default_factory=Path.cwd)
    seed: int = 0
    out: Path | None = None
    dataset: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def resolve(self, path: str) -> str:
        """Resolve a local relative path against ``base_dir``; URLs are returned as-is."""
        if "://" in path or path.startswith("/"):
            return path
        return str((self.base_dir / path).resolve())


class Component:
    """Base of all components. Subclasses set ``name``, a docstring and ``Options``."""

    kind: ClassVar[str] = ""
    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options

    def __init__(self, options: Options | None = None, context: Context | None = None):
        self.options = options if options is not None else self.Options()
        self.context = context if context is not None else Context()

    @classmethod
    def summary(cls) -> str:
        """The first line of the docstring."""
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0].strip() if doc else ""

    @classmethod
    def describe(cls) -> dict[str, Any]:
        """Name, kind, one-line doc and options (type, default, description) as JSON."""
        opts = {}
        schema = cls.Options.model_json_schema()
        props = schema.get("properties", {})
        for fname, finfo in cls.Options.model_fields.items():
            p = props.get(fname, {})
            entry: dict[str, Any] = {"type": _type_name(p)}
            if finfo.is_required():
                entry["required"] = True
            else:
                default = finfo.get_default(call_default_factory=True)
                entry["default"] = default if _jsonable(default) else repr(default)
            if finfo.description:
                entry["description"] = finfo.description
            opts[fname] = entry
        return {"kind": cls.kind, "name": cls.name, "doc": cls.summary(), "options": opts}

    def check_columns(self, schema: pl.Schema) -> list[str]:
        """Return error strings for input columns this component needs but ``schema`` lacks."""
        return [
            f"column {c!r} not found (available: {', '.join(schema.names()) or 'none'})"
            for c in self.required_columns()
            if c not in schema
        ]

    def required_columns(self) -> list[str]:
        """Columns this component reads (checked at plan time when known)."""
        return []


def _jsonable(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool, list, dict))


def _type_name(p: dict) -> str:
    if "enum" in p:
        return " | ".join(repr(x) for x in p["enum"])
    if "type" in p:
        t = p["type"]
        if t == "array" and "items" in p:
            return f"list[{_type_name(p['items'])}]"
        return t
    if "anyOf" in p:
        return " | ".join(_type_name(x) for x in p["anyOf"])
    if "const" in p:
        return repr(p["const"])
    if "$ref" in p:
        return p["$ref"].rsplit("/", 1)[-1]
    return "any"


@dataclass
class Partition:
    """One input piece of a partitioned source (a tar shard, an MDS shard...).

    ``id`` must be stable and unique within the dataset; ``info`` is JSON-serialisable
    data the source needs to read it back in a worker; ``rows`` is the row count when
    known cheaply (None otherwise).
    """

    id: str
    info: dict[str, Any] = field(default_factory=dict)
    rows: int | None = None


@dataclass
class PartitionData:
    """Rows read from one partition, plus rows lost while reading, per reason."""

    frame: pl.DataFrame
    rejected: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[dict]] = field(default_factory=dict)


class Source(Component):
    """Base of sources.

    Implement either ``scan`` (table sources: return a polars LazyFrame; the engine
    filters, samples, keys and cuts it into row-range units in the driver) or
    ``partitions`` + ``read_partition`` (partitioned sources: one work unit per
    partition, rows read inside the worker, filters applied there).
    """

    kind = "source"

    def scan(self) -> pl.LazyFrame | None:
        """Return the rows as a LazyFrame (table sources), or None."""
        return None

    def partitions(self) -> list[Partition] | None:
        """Return the list of partitions (partitioned sources), or None."""
        return None

    def read_partition(self, partition: Partition) -> PartitionData:
        """Read one partition in a worker. Damage is counted, not raised."""
        raise TypeError(f"source {self.name!r} is not partitioned")

    def fingerprint(self) -> dict[str, Any]:
        """Identity of the input (files and sizes) so a resumed run detects changed inputs."""
        return {}

    #: True when the source implements :meth:`take_state` and :meth:`take`: then the plan
    #: does not copy the table's binary columns (image bytes) but records each planned row's
    #: index, and every unit reads those columns back from the input itself.
    supports_take: ClassVar[bool] = False

    def take_state(self) -> dict[str, Any]:
        """JSON-able state :meth:`take` needs in a worker (e.g. each input file's row count
        and identity), made once at plan time and stored with the plan."""
        raise TypeError(f"source {self.name!r} does not support take")

    def take(self, columns: list[str], rows: Any, state: dict[str, Any]) -> pl.DataFrame:
        """The given columns (names as :meth:`scan` returns them) of the rows at the given
        positions of :meth:`scan`'s row order (a numpy integer array, before any filter; it
        may repeat positions), in that order. Raise if the input changed since ``state`` was
        made: the rows must be the ones planned."""
        raise TypeError(f"source {self.name!r} does not support take")


class Filter(Component):
    """Base of filters: a boolean polars expression over the rows' columns."""

    kind = "filter"

    @property
    def reason(self) -> str:
        """Rejection reason for rows this filter removes."""
        return f"filter:{self.name}"

    def expression(self, schema: pl.Schema) -> pl.Expr:
        """Boolean expression; rows where it is false or null are rejected."""
        raise TypeError(f"filter {self.name!r} defines no expression")


class Formatter(Component):
    """Base of formatters: DataFrame in, DataFrame out (vectorised)."""

    kind = "formatter"
    #: True when format() does per-sample Python work (worth worker processes).
    per_sample: ClassVar[bool] = False

    def format(self, df: pl.DataFrame) -> pl.DataFrame:
        raise TypeError(f"formatter {self.name!r} defines no format()")

    def output_schema(self, schema: pl.Schema) -> pl.Schema | None:
        """Columns after this formatter, when it can tell without data (None: unknown)."""
        return None


class Encoder(Component):
    """Base of encoders: model outputs for a batch, model loaded once per worker."""

    kind = "encoder"
    #: True when the encoder benefits from a GPU (the executor then places it on one).
    uses_gpu: ClassVar[bool] = True

    def setup(self, device: str) -> None:
        """Load the model on ``device`` ('cpu', 'cuda', 'cuda:N'); called once per worker."""

    def encode(self, df: pl.DataFrame) -> pl.DataFrame:
        raise TypeError(f"encoder {self.name!r} defines no encode()")

    def identity(self) -> dict[str, Any]:
        """Everything that determines the outputs (model id, revision/hash, dtype...)."""
        return {"name": self.name, "options": self.options.model_dump(mode="json")}

    def output_columns(self) -> dict[str, dict[str, Any]]:
        """``{column: {"dtype": ..., "shape": [...]}}`` of the columns ``encode`` adds."""
        return {}


class WriterOptions(Options):
    """Options every writer has."""

    path: str = ""
    """Sub-directory of the run's output directory this writer writes into."""


@dataclass
class UnitInfo:
    """What a writer knows about the unit it writes."""

    id: str
    index: int
    rows: int
    datasets: list[str] = field(default_factory=list)


class Writer(Component):
    """Base of writers.

    ``write_unit`` writes one unit's rows under ``staging`` using the same relative
    layout the files will have under the writer's root (``OUT/<path>``); the engine then
    moves each top-level entry of ``staging`` into the root with an atomic rename and
    records the unit as complete. File names must be derived from the unit id so a rerun
    of the unit replaces, never duplicates. ``finalize`` runs once all units are complete
    and must be idempotent; ``verify`` returns a list of problems (empty = valid).
    """

    kind = "writer"
    Options: ClassVar[type[Options]] = WriterOptions
    #: True when write_unit loops over samples in Python (tar members, MDS samples): the
    #: engine then uses worker processes. Vectorised writers (parquet) set False.
    per_sample: ClassVar[bool] = True

    def write_unit(self, df: pl.DataFrame, unit: UnitInfo, staging: Path) -> dict[str, Any]:
        raise TypeError(f"writer {self.name!r} defines no write_unit()")

    def finalize(self, root: Path, records: list[dict[str, Any]], manifest: dict[str, Any]) -> dict[str, Any]:
        """Merge per-unit outputs; return info recorded in the manifest under this writer."""
        return {}

    def verify(self, root: Path, manifest: dict[str, Any]) -> list[str]:
        """Check an existing output; return human-readable problems naming the file."""
        return []
