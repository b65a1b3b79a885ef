"""JSON Schema of the pipeline file, including every installed plugin's options."""

from __future__ import annotations

from typing import Any

from .config import DatasetSpec, RunOptions
from .registry import load


def _component_schema(cls: type) -> dict[str, Any]:
    s = cls.Options.model_json_schema()
    props = {"type": {"const": cls.name, "description": cls.summary()}}
    props.update(s.get("properties", {}))
    out: dict[str, Any] = {
        "type": "object",
        "title": f"{cls.kind} {cls.name}",
        "description": cls.summary(),
        "properties": props,
        "required": ["type", *s.get("required", [])],
        "additionalProperties": False,
    }
    if "$defs" in s:
        out["$defs"] = s["$defs"]
    return out


def _kind(reg, kind: str) -> dict[str, Any]:
    comps = [reg.components[kind][n] for n in sorted(reg.components[kind])]
    return {
        "anyOf": [_component_schema(c) for c in comps] + [{"type": "string", "enum": [c.name for c in comps]}],
        "description": f"a {kind}: a mapping with 'type' and its options, or just the type name",
    }


def pipeline_schema() -> dict[str, Any]:
    reg = load()
    ds = DatasetSpec.model_json_schema()
    ds_props = dict(ds["properties"])
    ds_props["source"] = _kind(reg, "source")
    ds_props["filters"] = {"type": "array", "items": _kind(reg, "filter")}
    ds_props.pop("key", None)
    ds_props["key"] = ds.get("$defs", {}).get("KeyOptions", {"type": "object"})
    schema: dict[str, Any] = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "mmprep pipeline",
        "type": "object",
        "additionalProperties": False,
        "required": ["datasets", "write"],
        "properties": {
            "version": {"const": 1},
            "datasets": {
                "type": "array",
                "minItems": 1,
                "items": {"type": "object", "properties": ds_props, "required": ["name", "source"], "additionalProperties": False},
            },
            "media": _media_schema(),
            "format": {"type": "array", "items": _kind(reg, "formatter")},
            "encode": {"type": "array", "items": _kind(reg, "encoder")},
            "write": {"type": "array", "minItems": 1, "items": _kind(reg, "writer")},
            "run": RunOptions.model_json_schema(),
        },
    }
    return schema


def _media_schema() -> dict[str, Any]:
    try:
        from .media import MediaOptions
    except ImportError:
        return {"type": ["object", "null"]}
    return {"anyOf": [MediaOptions.model_json_schema(), {"type": "null"}]}
