"""LLaVA / LaViDa-O conversation formatters.

Each formatter adds the payload column (option ``column``, default ``llava``): one LLaVA
sample per row as a JSON string (see :mod:`mmprep_llava.payload`), validated (invalid rows
rejected with reason ``llava_invalid``). Templates are those of LaViDa-O's
``llava/train/data/{text_image,und,interleaved}.py``; the LaViDa-O function names are
accepted as ``preprocess_fn`` by the data-YAML dialect (:data:`ALIASES`).

Per-sample random choices (caption key, sentence truncation) are drawn from a seeded stable
hash of the sample key (:func:`mmprep.hashing.unit_floats`), not from a global RNG, so reruns
and different worker counts give identical payloads.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, field_validator, model_validator

from mmprep import Formatter, Options

from . import payload as P

__all__ = ["ALIASES", "ALL"]


class LlavaOptions(Options):
    column: str = Field(default="llava", description="Output column holding the payload (a JSON string)")
    id: Literal["key", "constant"] = Field(default="key", description="Payload id: the stable sample key, or LaViDa-O's constant '000951660'")
    datasets: list[str] | None = Field(default=None, description="Only format rows of these datasets (default: all rows)")
    validate_payload: bool = Field(default=True, description="Reject invalid payloads (reason llava_invalid)")
    s3_prefix: str = Field(default="", description="Prefix joined (os.path.join) onto relative image paths where LaViDa-O does")


class LlavaFormatter(Formatter):
    """Base of the LLaVA formatters."""

    Options = LlavaOptions

    def fields(self, df: pl.DataFrame) -> tuple[dict[str, pl.Expr], tuple[str, ...]]:
        raise TypeError(f"formatter {self.name!r} defines no fields()")

    def format(self, df: pl.DataFrame) -> pl.DataFrame:
        o = self.options
        if o.datasets is not None and "dataset" in df.columns:
            mask = df["dataset"].is_in(o.datasets)
            n = int(mask.sum())
            if n == 0:
                return df
            if n < df.height:  # rows of several datasets in one frame: format only ours
                idx = "__llava_row"
                d = df.with_row_index(idx)
                mine = self._format(d.filter(mask))
                rest = d.filter(~mask)
                return pl.concat([mine, rest], how="diagonal_relaxed").sort(idx).drop(idx)
        return self._format(df)

    def _format(self, df: pl.DataFrame) -> pl.DataFrame:
        missing = [c for c in self.required_columns() if c not in df.columns]
        if missing:
            raise KeyError(f"formatter {self.name}: columns {missing} not in the rows (have {df.columns})")
        fields, optional = self.fields(df)
        return P.finish(df, fields, column=self.options.column, optional=optional, validate=self.options.validate_payload)


# -- text to image ------------------------------------------------------------------------
class T2IOptions(LlavaOptions):
    caption_key: str = Field(default="caption", description="Caption column")
    random_caption_keys: list[str] | None = Field(default=None, description="Pick the caption column per sample among these (seeded by the key)")
    no_drop_keys: list[str] | None = Field(default=None, description="Caption columns never truncated (overrides random_truncate)")
    random_truncate: bool = Field(default=True, description="Allow the random sentence truncation")
    truncate_probability: float = Field(default=0.2, ge=0, le=1, description="Probability of truncating a long caption to its first k sentences")
    truncate_min_chars: int = Field(default=150, ge=0, description="Only captions longer than this are truncated")
    max_caption_chars: int | None = Field(default_factory=P.max_cap_length_default, ge=1, description="Cut captions to this many characters (env MAX_CAP_LENGTH, default 800)")
    micro_conditions: bool = Field(default=True, description="Append the [[micro_conds_texts]] placeholder to the prompt")
    image_column: str = Field(default="s3_path", description="Column of the image to generate")
    image_prefix: str = Field(default="", description="Prefix put before the image path (e.g. 'piat://')")
    gen_score_column: str | None = Field(default="fltLaionAesthScore", description="Column copied as gen_score: [x] when present")
    hpsv2_column: str | None = Field(default="hpsv2", description="Column copied as hpsv2: [x] when present")
    seed: int = Field(default=0, ge=0, description="Added to the run seed for the per-key draws")

    @field_validator("random_caption_keys")
    @classmethod
    def _nonempty(cls, v):
        if v is not None and not v:
            raise ValueError("must list at least one column")
        return v


def _split_sentences(cap: pl.Series) -> pl.Series:
    """``re.split(r'(?<=[.!?]) +', caption.strip())`` per row, as a list column.

    Sentence ends are marked with a character no caption of the batch contains (NUL unless
    one does), then split on.
    """
    cap = cap.str.strip_chars()
    marker = next((m for m in map(chr, [*range(32), 0xFFFE, 0xFFFF]) if m not in "\t\n\r " and not cap.str.contains(m, literal=True).any()), None)
    if marker is None:  # every candidate occurs: regex marking with NUL (splits at NULs too)
        return cap.str.replace_all(r"([.!?]) +", "${1}\x00").str.split("\x00")
    # mark 'punctuation + space', then drop the rest of the space run
    marked = cap.str.replace_many([". ", "! ", "? "], [f".{marker}", f"!{marker}", f"?{marker}"])
    return marked.str.replace_all(re.escape(marker) + " +", marker).str.split(marker)


class T2IFormatter(LlavaFormatter):
    """Text-to-image payloads (LaViDa-O preproces_text_to_image_generation_s3)."""

    name = "llava-t2i"
    Options = T2IOptions

    def caption_columns(self) -> list[str]:
        o = self.options
        return list(o.random_caption_keys) if o.random_caption_keys else [o.caption_key]

    def required_columns(self):
        return [self.options.image_column, *self.caption_columns()]

    def caption(self, df: pl.DataFrame) -> pl.Expr:
        """The caption of each row after the per-key choices (computed on the frame, as a literal column)."""
        o = self.options
        keys = self.caption_columns()
        seed = self.context.seed + o.seed
        u_key, u_trunc, u_k = P.key_draws(df["key"], seed, 3)
        no_drop = set(o.no_drop_keys or [])
        allowed = np.array([(k not in no_drop) if o.no_drop_keys is not None else o.random_truncate for k in keys])
        cap = df[keys[0]].cast(pl.String)
        if len(keys) == 1:
            may = np.full(df.height, allowed[0])
        else:  # np.random.choice(random_caption_keys), one draw per key
            choice = np.minimum((u_key * len(keys)).astype(np.int64), len(keys) - 1)
            cap = cap.clone()
            for i in range(1, len(keys)):
                idx = np.flatnonzero(choice == i)
                if len(idx):
                    cap = cap.scatter(idx, df[keys[i]].cast(pl.String).gather(idx))
            may = allowed[choice]
        lengths = cap.str.len_chars().fill_null(0).to_numpy()
        if allowed.any() and o.truncate_probability > 0:
            # only rows drawn for truncation are split (a few percent of them)
            idx = np.flatnonzero((u_trunc < o.truncate_probability) & (lengths > o.truncate_min_chars) & may)
            if len(idx):
                # randomly_select_sentences: re.split(r'(?<=[.!?]) +', caption.strip()), k ~ U{1..n}, ' '.join(first k)
                parts = _split_sentences(cap.gather(idx))
                k = np.floor(u_k[idx] * parts.list.len().to_numpy()).astype(np.int64) + 1
                cut = pl.select(pl.lit(parts).list.slice(0, pl.lit(pl.Series(k))).list.join(" ")).to_series()
                cap = cap.clone().scatter(idx, cut)
        if o.max_caption_chars:
            # truncation never lengthens a caption: only rows longer than the cap need cutting
            idx = np.flatnonzero(lengths > o.max_caption_chars)
            if len(idx):
                cap = cap.clone().scatter(idx, cap.gather(idx).str.slice(0, o.max_caption_chars))
        return pl.lit(cap)

    def image(self, df: pl.DataFrame) -> pl.Expr:
        o = self.options
        img = pl.col(o.image_column).cast(pl.String)
        if o.image_prefix:
            img = pl.lit(o.image_prefix) + img
        return P.media_path(df, img)

    def fields(self, df):
        o = self.options
        tail = f" {P.MICRO}" if o.micro_conditions else ""
        human = pl.concat_str([pl.lit("Generate an image with the caption: "), self.caption(df), pl.lit(tail)])
        f = {
            "id": P.id_expr(o.id),
            "image_gen": self.image(df),
            "conversations": P.conversation(df, ("human", human), ("gpt", pl.lit("Sure <image_gen>"))),
        }
        if o.gen_score_column and o.gen_score_column in df.columns:
            f["gen_score"] = pl.concat_list([pl.col(o.gen_score_column)])
        if o.hpsv2_column and o.hpsv2_column in df.columns:
            f["hpsv2"] = pl.concat_list([pl.col(o.hpsv2_column)])
        return f, ()


class T2IHashOptions(T2IOptions):
    caption_key: str = Field(default="longLLA_captions", description="Caption column")
    image_column: str = Field(default="strImagehash", description="Column of the image hash")
    image_prefix: str = Field(default="piat://", description="Scheme put before the hash")


class T2IHashFormatter(T2IFormatter):
    """Text-to-image payloads from image hashes (LaViDa-O preproces_text_to_image_generation_piat_hash)."""

    name = "llava-t2i-hash"
    Options = T2IHashOptions


# -- understanding -------------------------------------------------------------------------
class GroundedOptions(LlavaOptions):
    image_column: str = Field(default="s3_path", description="Image path column")
    caption_column: str = Field(default="loc_caption", description="Caption with LOC boxes (the answer)")


class GroundedCaptionFormatter(LlavaFormatter):
    """Dense grounded caption payloads (LaViDa-O preproces_grandf); s3_prefix is ignored as there."""

    name = "llava-grounded-caption"
    Options = GroundedOptions

    def required_columns(self):
        return [self.options.image_column, self.options.caption_column]

    def fields(self, df):
        o = self.options
        return {
            "id": P.id_expr(o.id),
            "image": P.media_path(df, pl.col(o.image_column).cast(pl.String)),
            "conversations": P.conversation(
                df,
                ("human", pl.lit("<image>\n Generate a dense image caption with bounding boxes in LOC format.")),
                ("gpt", pl.col(o.caption_column)),
            ),
        }, ()


class RecOptions(LlavaOptions):
    image_column: str = Field(default="s3_path", description="Image path column")
    label_column: str = Field(default="label", description="Referring expression")
    loc_column: str = Field(default="loc_string", description="Answer boxes in LOC format")


class RecFormatter(LlavaFormatter):
    """Referring-expression localisation payloads (LaViDa-O preproces_refcoco_rec)."""

    name = "llava-rec"
    Options = RecOptions

    def required_columns(self):
        o = self.options
        return [o.image_column, o.label_column, o.loc_column]

    def fields(self, df):
        o = self.options
        human = pl.concat_str(
            [pl.lit("<image>\n Please locate "), pl.col(o.label_column).cast(pl.String), pl.lit(" in this image. Give bounding boxes in LOC format.")]
        )
        return {
            "id": P.id_expr(o.id),
            "image": P.media_path(df, pl.col(o.image_column).cast(pl.String)),
            "conversations": P.conversation(df, ("human", human), ("gpt", pl.col(o.loc_column))),
        }, ()


class UnderstandingOptions(LlavaOptions):
    image_column: str = Field(default="image", description="Image path column (null: text-only sample)")
    conversations_column: str = Field(default="conversations", description="Conversations: a JSON string or a list of {from, value}")


class UnderstandingFormatter(LlavaFormatter):
    """Single-image understanding payloads from stored conversations (LaViDa-O preproces_und_mammoth_si_10M)."""

    name = "llava-understanding"
    Options = UnderstandingOptions

    def required_columns(self):
        return [self.options.image_column, self.options.conversations_column]

    def fields(self, df):
        o = self.options
        img = P.media_path(df, P.join_prefix(pl.col(o.image_column).cast(pl.String), o.s3_prefix), o.image_column)
        return {
            "id": P.id_expr(o.id),
            "conversations": P.as_conversations(df, o.conversations_column),
            "image": img,
        }, ("image",)


class MultiImageOptions(UnderstandingOptions):
    reasoning_min_words: int = Field(default=150, ge=0, description="Answers longer than this many words get the reasoning request")
    reasoning_suffix: str = Field(
        default="\n Please also perform detailed reasoning for this problem and provide detailed reasoning traces.",
        description="Appended to the first question when the first answer is long",
    )


class MultiImageFormatter(LlavaFormatter):
    """Multi-image instruction payloads (LaViDa-O preproces_vw_instruct)."""

    name = "llava-multi-image"
    Options = MultiImageOptions

    def required_columns(self):
        return [self.options.image_column, self.options.conversations_column]

    def fields(self, df):
        o = self.options
        conv = P.as_conversations(df, o.conversations_column)
        first = conv.list.first()
        answer_words = conv.list.get(1, null_on_oob=True).struct.field("value").str.count_matches(r"\S+").fill_null(0)
        q = first.struct.field("value")
        q = pl.when(answer_words > o.reasoning_min_words).then(q + pl.lit(o.reasoning_suffix)).otherwise(q)
        new_first = pl.struct(first.struct.field("from"), q.alias("value"))
        conv = pl.when(conv.list.len() > 0).then(pl.concat_list([new_first, conv.list.slice(1)])).otherwise(conv)
        images = P.as_list(df, o.image_column).list.eval(P.join_prefix(pl.element(), o.s3_prefix))
        images = P.media_list(df, images, o.image_column)
        return {"id": P.id_expr(o.id), "conversations": conv, "image": images}, ("image",)


# -- editing -------------------------------------------------------------------------------
class EditOptions(LlavaOptions):
    input_column: str = Field(default="input_paths", description="Input image(s): a list, a JSON list or one path")
    output_column: str = Field(default="output_paths", description="Target image path")
    instruction_column: str = Field(default="instruction", description="Edit instruction")
    no_template: bool = Field(default=False, description="Leave out the '<image> <image_gen_enc> ' tokens (then validation rejects)")
    t2i: bool = Field(default=False, description="Append the micro-condition placeholder")
    reweight: bool = Field(default=False, description="Value of the payload's reweight flag")
    pixel_diff: bool | None = Field(default=False, description="Value of the pixel_diff flag (null: leave the field out)")
    hpsv2_column: str | None = Field(default="hpsv2", description="Column copied as hpsv2: [x] when present")


class EditFormatter(LlavaFormatter):
    """Image editing payloads (LaViDa-O process_gpt_edit / process_sharegpt_4o_edit / process_pica_banana)."""

    name = "llava-edit"
    Options = EditOptions

    def required_columns(self):
        o = self.options
        return [o.input_column, o.output_column, o.instruction_column]

    def fields(self, df):
        o = self.options
        inputs = P.as_list(df, o.input_column).list.eval(P.join_prefix(pl.element(), o.s3_prefix))
        inputs = P.media_list(df, inputs, o.input_column)
        target = P.join_prefix(pl.col(o.output_column).cast(pl.String), o.s3_prefix)
        n = inputs.list.len().fill_null(0)
        template = pl.lit("") if o.no_template else pl.lit("<image> <image_gen_enc> ").repeat_by(n).list.join("")
        micro = f" {P.MICRO}" if o.t2i else ""
        human = pl.concat_str([template, pl.lit(" "), pl.col(o.instruction_column).cast(pl.String), pl.lit(micro)])
        f: dict[str, pl.Expr] = {
            "id": P.id_expr(o.id),
            "image_gen_enc": inputs,
            "image": inputs,
            "image_gen": P.media_path(df, target, o.output_column),
            "pad_image_gen": pl.lit(True),
        }
        if o.pixel_diff is not None:
            f["pixel_diff"] = pl.lit(o.pixel_diff)
        f["conversations"] = P.conversation(df, ("human", human), ("gpt", pl.lit("Sure <image_gen>")))
        f["reweight"] = pl.lit(o.reweight)
        if o.hpsv2_column and o.hpsv2_column in df.columns:
            f["hpsv2"] = pl.concat_list([pl.col(o.hpsv2_column)])
        return f, ()


# -- generic -------------------------------------------------------------------------------
class TurnSpec(Options):
    role: Literal["human", "gpt"] = Field(alias="from", description="Speaker")
    value: str = Field(description="Template over columns, e.g. '<image>\\n{question}'")

    model_config = {**Options.model_config, "populate_by_name": True}


class TemplateOptions(LlavaOptions):
    conversations: list[TurnSpec] = Field(min_length=1, description="Turns: [{from: human|gpt, value: template}]")
    image: str | None = Field(default=None, description="Column of the understanding image(s) (string or list)")
    image_gen: str | None = Field(default=None, description="Column of the image to generate")
    image_gen_enc: str | None = Field(default=None, description="Column of the encoder-side images (list)")
    image_prefix: str = Field(default="", description="Prefix joined onto relative image paths")
    extra: dict[str, str] = Field(default_factory=dict, description="Extra payload fields: payload key -> column")
    null: str | None = Field(default=None, description="Text for null template fields (None: the turn is null and rejected)")

    @model_validator(mode="after")
    def _templates(self):
        from mmprep.builtins.formatters import parse_template

        for t in self.conversations:
            parse_template(t.value)
        return self


class TemplateFormatter(LlavaFormatter):
    """Generic LLaVA payloads: human/gpt turn templates over any columns."""

    name = "llava-template"
    Options = TemplateOptions

    def required_columns(self):
        from mmprep.builtins.formatters import parse_template

        o = self.options
        cols = [c for c in (o.image, o.image_gen, o.image_gen_enc) if c]
        for t in o.conversations:
            cols += parse_template(t.value)[1]
        return list(dict.fromkeys([*cols, *o.extra.values()]))

    def fields(self, df):
        from mmprep.builtins.formatters import template_expr

        o = self.options
        f: dict[str, pl.Expr] = {"id": P.id_expr(o.id)}
        optional: list[str] = []
        if o.image:
            if isinstance(df.schema[o.image], (pl.List, pl.Array)):
                f["image"] = P.media_list(df, P.as_list(df, o.image).list.eval(P.join_prefix(pl.element(), o.image_prefix)), o.image)
            else:
                f["image"] = P.media_path(df, P.join_prefix(pl.col(o.image).cast(pl.String), o.image_prefix), o.image)
            optional.append("image")
        if o.image_gen_enc:
            f["image_gen_enc"] = P.media_list(df, P.as_list(df, o.image_gen_enc).list.eval(P.join_prefix(pl.element(), o.image_prefix)), o.image_gen_enc)
        if o.image_gen:
            gen = P.join_prefix(pl.col(o.image_gen).cast(pl.String), o.image_prefix)
            # the main image_bytes belongs to `image` when both are set; image_gen takes its own
            # extra column's bytes when the media stage made them
            extra = f"{o.image_gen}{P.EXTRA_BYTES_SUFFIX}" in df.columns
            f["image_gen"] = P.media_path(df, gen, o.image_gen) if (extra or not o.image) else gen
        f["conversations"] = P.conversation(df, *((t.role, template_expr(t.value, o.null)) for t in o.conversations))
        for k, c in o.extra.items():
            f[k] = pl.col(c)
        return f, tuple(optional)


class PassthroughOptions(LlavaOptions):
    keep_id: bool = Field(default=False, description="Keep an existing 'id' column instead of the key")


class PassthroughFormatter(LlavaFormatter):
    """Rows that already are LLaVA records (LaViDa-O without preprocess_fn): re-encode and validate."""

    name = "llava-passthrough"
    Options = PassthroughOptions

    def required_columns(self):
        return ["conversations"]

    def fields(self, df):
        o = self.options
        skip = {"key", "dataset", "id", o.column, "image_bytes", "_reject_reason", "_reject_message", "width", "height"}
        # the media stage's bytes of extra_image_columns (<c>_media beside c) are files, not fields
        skip |= {c for c in df.columns if c.endswith(P.EXTRA_BYTES_SUFFIX) and c[: -len(P.EXTRA_BYTES_SUFFIX)] in df.columns}
        ident = pl.col("id").cast(pl.String) if o.keep_id and "id" in df.columns else P.id_expr(o.id)
        f: dict[str, pl.Expr] = {"id": ident}
        for c in df.columns:
            if c in skip or c.startswith("__"):
                continue
            dt = df.schema[c]
            if c == "conversations":
                f[c] = P.as_conversations(df, c)
            elif c == "image" and dt == pl.String:
                f[c] = P.media_path(df, pl.col(c), c)
            elif c == "image_gen" and dt == pl.String and f"{c}{P.EXTRA_BYTES_SUFFIX}" in df.columns:
                f[c] = P.media_path(df, pl.col(c), c)
            elif c in ("image", "image_gen_enc") and isinstance(dt, (pl.List, pl.Array)):
                f[c] = P.media_list(df, pl.col(c).cast(pl.List(pl.String)), c)
            else:
                f[c] = pl.col(c)
        return f, tuple(c for c in f if c not in ("id", "conversations"))


# -- LaViDa-O image_root -------------------------------------------------------------------
class ImageRootOptions(Options):
    root: str = Field(description="Directory joined onto relative paths (os.path.join)")
    column: str = Field(default="image", description="Path column (a string or a list of strings)")
    datasets: list[str] | None = Field(default=None, description="Only rows of these datasets")


class ImageRootFormatter(Formatter):
    """Join relative image paths onto a root directory (LaViDa-O image_root); absolute paths stay."""

    name = "llava-image-root"
    Options = ImageRootOptions

    def format(self, df):
        o = self.options
        if o.column not in df.columns:
            return df
        dt = df.schema[o.column]
        if isinstance(dt, (pl.List, pl.Array)):
            new = pl.col(o.column).list.eval(P.join_prefix(pl.element().cast(pl.String), o.root))
        elif dt == pl.String:
            new = P.join_prefix(pl.col(o.column), o.root)
        else:
            return df
        if o.datasets is not None and "dataset" in df.columns:
            new = pl.when(pl.col("dataset").is_in(o.datasets)).then(new).otherwise(pl.col(o.column))
        return df.with_columns(new.alias(o.column))


ALL = [
    T2IFormatter,
    T2IHashFormatter,
    GroundedCaptionFormatter,
    RecFormatter,
    UnderstandingFormatter,
    MultiImageFormatter,
    EditFormatter,
    TemplateFormatter,
    PassthroughFormatter,
    ImageRootFormatter,
]

#: LaViDa-O preprocess_fn name -> (formatter name, default options). Names LaViDa-O has
#: that mmprep does not implement are in UNSUPPORTED.
ALIASES: dict[str, tuple[str, dict[str, Any]]] = {
    "preproces_text_to_image_generation_s3": ("llava-t2i", {}),
    "preproces_text_to_image_generation_piat_hash": ("llava-t2i-hash", {}),
    "preproces_grandf": ("llava-grounded-caption", {}),
    "preproces_refcoco_rec": ("llava-rec", {}),
    "preproces_und_mammoth_si_10M": ("llava-understanding", {}),
    "preproces_vw_instruct": ("llava-multi-image", {}),
    "process_gpt_edit": ("llava-edit", {}),
    "process_sharegpt_4o_edit": (
        "llava-edit",
        {"input_column": "input_image", "output_column": "output_image", "instruction_column": "input_prompt", "pixel_diff": None, "hpsv2_column": None},
    ),
    "process_pica_banana": (
        "llava-edit",
        {"input_column": "local_input_image", "output_column": "local_output_image", "instruction_column": "text"},
    ),
}
UNSUPPORTED = [
    "preproces_text_to_image_generation_s3_loc",
    "preproces_text_to_image_generation_layout_sam",
    "preprocess_reflection_und",
    "process_metaquery",
    "process_uniworld",
    "process_gpt_edit_loc_gnd",
]
