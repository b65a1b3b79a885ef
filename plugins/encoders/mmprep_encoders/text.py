"""Text encoders: ``clip-text``, ``t5``, ``llm-mean``, ``open-clip-text``.

Each encodes one or more text columns (``columns``), each to its own output column
(``outputs``; default ``<column>_<suffix>``). Null texts encode as the empty string.

Token truncations (texts longer than ``max_length`` tokens) are counted: in
:meth:`TorchEncoder.stats` (``truncated``, per process) and, with
``truncation_column: true``, per sample in a boolean column ``<output>_truncated`` that
the writers can store. Truncation never rejects a sample.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
from pydantic import Field, model_validator

from .base import EncoderOptions, Ragged, TorchEncoder, file_hash, read_config, weights_hash


class TextOptions(EncoderOptions):
    model: str = Field(description="Hub id or local path of the model (and its tokenizer)")
    subfolder: str | None = Field(default=None, description="Sub-folder of the model (e.g. 'text_encoder')")
    tokenizer: str | None = Field(default=None, description="Tokenizer id/path when not next to the model")
    tokenizer_subfolder: str | None = Field(default=None, description="Sub-folder of the tokenizer (e.g. 'tokenizer')")
    revision: str | None = Field(default=None, description="Hub revision")
    columns: list[str] = Field(default=["caption"], min_length=1, description="Text columns to encode")
    outputs: list[str] | None = Field(default=None, description="Output column per text column (default <column>_<suffix>)")
    max_length: int = Field(default=77, ge=1, description="Tokens per text (longer texts are truncated and counted)")
    truncation_column: bool = Field(default=False, description="Add a boolean <output>_truncated column per output")

    @model_validator(mode="after")
    def _outs(self):
        if self.outputs is not None and len(self.outputs) != len(self.columns):
            raise ValueError("outputs must name one column per text column")
        return self


class TextEncoder(TorchEncoder):
    """Base of the text encoders (not registered)."""

    Options = TextOptions
    suffix = "emb"
    model_class = ""
    _stat_names = ("encoded", "non_finite", "truncated")

    def __init__(self, options=None, context=None):
        super().__init__(options, context)
        self._config: dict[str, Any] | None = None
        self.tokenizer = None

    @property
    def config(self) -> dict[str, Any]:
        if self._config is None:
            o = self.options
            self._config = read_config(o.model, o.subfolder, o.revision)
        return self._config

    def column_names(self) -> list[str]:
        return self.options.outputs or [f"{c}_{self.suffix}" for c in self.options.columns]

    def required_columns(self) -> list[str]:
        return list(self.options.columns)

    def hidden_size(self) -> int:
        c = self.config
        for k in ("hidden_size", "d_model", "n_embd", "dim"):
            if k in c:
                return int(c[k])
        if "text_config" in c:
            return int(c["text_config"].get("hidden_size"))
        raise KeyError(f"{self.options.model}: cannot tell the hidden size from config.json")

    def sample_shape(self) -> list[int | None]:
        raise TypeError(f"{type(self).__name__} must implement sample_shape()")

    def output_columns(self) -> dict[str, dict[str, Any]]:
        return {n: {"dtype": self.options.storage_dtype, "shape": self.sample_shape()} for n in self.column_names()}

    def extra_identity(self) -> dict[str, Any]:
        return {}

    def identity(self) -> dict[str, Any]:
        o = self.options
        return {
            **self.base_identity(),
            "class": self.model_class,
            "model": o.model,
            "subfolder": o.subfolder,
            "tokenizer": o.tokenizer,
            "revision": o.revision,
            "weights": weights_hash(o.model, o.subfolder, o.revision),
            "max_length": o.max_length,
            **self.extra_identity(),
        }

    # ---- loading ----
    def load_tokenizer(self):
        from transformers import AutoTokenizer

        o = self.options
        kw: dict[str, Any] = {}
        if o.revision:
            kw["revision"] = o.revision
        src = o.tokenizer or o.model
        sub = o.tokenizer_subfolder if o.tokenizer_subfolder is not None else (None if o.tokenizer else o.subfolder)
        if sub:
            kw["subfolder"] = sub
        kw.update(self.tokenizer_kwargs())
        try:
            return AutoTokenizer.from_pretrained(src, **kw)
        except (OSError, ValueError):
            if "subfolder" in kw and o.tokenizer_subfolder is None:
                # diffusers layout: text_encoder/ + tokenizer/
                kw["subfolder"] = "tokenizer" if o.subfolder in ("text_encoder", None) else o.subfolder.replace("text_encoder", "tokenizer")
                return AutoTokenizer.from_pretrained(src, **kw)
            raise

    def tokenizer_kwargs(self) -> dict[str, Any]:
        return {}

    def model_kwargs(self) -> dict[str, Any]:
        o = self.options
        kw: dict[str, Any] = {}
        if o.subfolder:
            kw["subfolder"] = o.subfolder
        if o.revision:
            kw["revision"] = o.revision
        return kw

    def unload_extra(self) -> None:
        self.tokenizer = None

    # ---- per batch ----
    def tokenize(self, texts: list[str], padding: str = "max_length"):
        """Token ids and attention mask (pinned on CUDA) plus a truncated flag per text.

        One tokeniser pass without truncation gives every text's exact length; only the texts
        over ``max_length`` are tokenised again with the tokeniser's own truncation (which keeps
        its special tokens, e.g. CLIP's end-of-text), then all are padded with the tokeniser's
        pad id on its padding side: the same ids and mask as ``tokenizer(texts,
        max_length=..., padding=..., truncation=True)``, at about half the cost of calling it
        and counting truncations with a second full pass. ``padding``: ``max_length`` or
        ``longest`` (the batch's longest, at most ``max_length``).
        """
        import torch

        tok = self.tokenizer
        limit = self.options.max_length
        kw = {"add_special_tokens": True, "padding": False, "return_attention_mask": False, "verbose": False}
        seqs = list(tok(texts, truncation=False, **kw)["input_ids"])
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        truncated = lengths > limit
        if truncated.any():
            long = np.flatnonzero(truncated)
            again = tok([texts[i] for i in long], truncation=True, max_length=limit, **kw)["input_ids"]
            for i, ids in zip(long, again):
                seqs[i] = ids
            lengths[long] = [len(ids) for ids in again]
        width = limit if padding == "max_length" else int(lengths.max(initial=0))
        if tok.pad_token_id is None:
            raise ValueError(f"{self.name}: the tokenizer of {self.options.model} has no pad token")
        ids = np.full((len(seqs), width), tok.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        if len(seqs) and lengths.sum():
            rows = np.repeat(np.arange(len(seqs)), lengths)
            starts = np.cumsum(lengths) - lengths
            cols = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
            if tok.padding_side == "left":
                cols += np.repeat(width - lengths, lengths)
            ids[rows, cols] = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lengths.sum()))
            mask[rows, cols] = 1
        return self.pin(torch.from_numpy(ids)), self.pin(torch.from_numpy(mask)), truncated

    def prepare(self, rows: pl.DataFrame) -> dict[str, Any]:
        batch: dict[str, Any] = {}
        for col, out in zip(self.options.columns, self.column_names()):
            texts = [t if isinstance(t, str) else "" for t in rows[col].cast(pl.String).to_list()]
            batch[out] = self.tokenize(texts)
        return batch

    def encode(self, df: pl.DataFrame) -> pl.DataFrame:
        self._trunc_flags = {n: np.zeros(df.height, dtype=bool) for n in self.column_names()}
        self._row_offset = 0
        out = super().encode(df)
        if self.options.truncation_column:
            out = out.with_columns(pl.Series(f"{n}_truncated", f, dtype=pl.Boolean) for n, f in self._trunc_flags.items())
        return out

    def _start_copy(self, out, idx):
        for name, flags in out.pop("_truncated", {}).items():
            self._trunc_flags[name][idx] = flags
            self._counters["truncated"] += int(flags.sum())
        return super()._start_copy(out, idx)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"_truncated": {}}
        for name, (ids, mask, truncated) in batch.items():
            out["_truncated"][name] = truncated
            lengths = mask.sum(dim=1)  # on the host: no device sync
            ids, mask = self.to_device(ids), self.to_device(mask)
            with self.autocast():
                res = self.run_model(ids, mask, lengths)
            if isinstance(res, dict):
                for suffix, v in res.items():
                    out[name + suffix] = v
            else:
                out[name] = res
        return out

    def run_model(self, ids, mask, lengths):
        """Device work for one text column: ``ids``/``mask`` [B, L] on the device, ``lengths``
        [B] on the host; returns a tensor, a :class:`Ragged`, or {suffix: tensor}."""
        raise TypeError(f"{type(self).__name__} must implement run_model()")


class ClipTextOptions(TextOptions):
    pooled: bool = Field(default=False, description="Also store the pooled (EOS) vector as <output>_pooled [D]")
    use_attention_mask: bool = Field(default=False, description="Pass the attention mask (CLIP is causal; default off, as SD/NeMo)")


class ClipTextEncoder(TextEncoder):
    """CLIP text token states after the final layer norm [max_length, D] (transformers CLIPTextModel)."""

    name = "clip-text"
    Options = ClipTextOptions
    suffix = "latents"
    model_class = "transformers.CLIPTextModel"

    def hidden_size(self) -> int:
        c = self.config
        return int(c["text_config"]["hidden_size"]) if "text_config" in c else int(c["hidden_size"])

    def sample_shape(self):
        return [self.options.max_length, self.hidden_size()]

    def output_columns(self):
        cols = super().output_columns()
        if self.options.pooled:
            for n in self.column_names():
                cols[f"{n}_pooled"] = {"dtype": self.options.storage_dtype, "shape": [self.hidden_size()]}
        return cols

    def extra_identity(self):
        return {"pooled": self.options.pooled, "use_attention_mask": self.options.use_attention_mask}

    def load(self, device):
        from transformers import CLIPTextModel

        self.tokenizer = self.load_tokenizer()
        self.model = CLIPTextModel.from_pretrained(self.options.model, **self.model_kwargs()).eval().to(device)

    def run_model(self, ids, mask, lengths):
        out = self.model(input_ids=ids, attention_mask=mask if self.options.use_attention_mask else None)
        if self.options.pooled:
            return {"": out.last_hidden_state, "_pooled": out.pooler_output}
        return out.last_hidden_state


class T5Options(TextOptions):
    max_length: int = Field(default=512, ge=1, description="Tokens per text (longer texts are truncated and counted)")
    store_pad_tokens: bool = Field(
        default=False, description="true: [max_length, D] with pad rows; false: only the unpadded rows [n_tokens, D]"
    )


class T5TextEncoder(TextEncoder):
    """T5 encoder token states with attention mask; pad rows stripped unless store_pad_tokens."""

    name = "t5"
    Options = T5Options
    suffix = "t5"
    model_class = "transformers.T5EncoderModel"

    def sample_shape(self):
        return [self.options.max_length if self.options.store_pad_tokens else None, self.hidden_size()]

    def extra_identity(self):
        return {"store_pad_tokens": self.options.store_pad_tokens}

    def load(self, device):
        from transformers import T5EncoderModel

        self.tokenizer = self.load_tokenizer()
        self.tokenizer.padding_side = "right"  # tokens first: the unpadded rows are a prefix
        self.model = T5EncoderModel.from_pretrained(self.options.model, **self.model_kwargs()).eval().to(device)

    def run_model(self, ids, mask, lengths):
        h = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return h if self.options.store_pad_tokens else Ragged(h, lengths)


class LlmMeanOptions(TextOptions):
    max_length: int = Field(default=512, ge=1, description="Tokens per text (LLM2CLIP: 512)")
    storage_dtype: Literal["float16", "float32"] = Field(default="float32", description="dtype of the stored vectors")
    trust_remote_code: bool = Field(default=False, description="Allow the model repo's own code (only set for repos you trust)")
    layer: int = Field(default=-1, description="Hidden-state layer to pool (-1: the last)")


class LlmMeanEncoder(TextEncoder):
    """Mean-pooled hidden states over non-pad tokens of any transformers AutoModel (LLM2CLIP style)."""

    name = "llm-mean"
    Options = LlmMeanOptions
    suffix = "embedding"
    model_class = "transformers.AutoModel"

    def sample_shape(self):
        return [self.hidden_size()]

    def extra_identity(self):
        return {"pooling": "mean", "layer": self.options.layer, "trust_remote_code": self.options.trust_remote_code}

    def tokenizer_kwargs(self):
        return {"trust_remote_code": True} if self.options.trust_remote_code else {}

    def load(self, device):
        from transformers import AutoModel

        tok = self.load_tokenizer()
        tok.padding_side = "right"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token or tok.unk_token
        self.tokenizer = tok
        kw = self.model_kwargs()
        if self.options.trust_remote_code:
            kw["trust_remote_code"] = True
        self.model = AutoModel.from_pretrained(self.options.model, **kw).eval().to(device)

    def prepare(self, rows):
        batch = {}
        for col, out in zip(self.options.columns, self.column_names()):
            texts = [t if isinstance(t, str) else "" for t in rows[col].cast(pl.String).to_list()]
            ids, mask, truncated = self.tokenize(texts, padding="longest")
            empty = mask.sum(dim=1) == 0
            if bool(empty.any()):
                # a text with no tokens (empty, no BOS) is encoded as the EOS/pad token alone
                import torch

                if ids.shape[1] == 0:
                    ids = torch.full((ids.shape[0], 1), self.tokenizer.pad_token_id, dtype=ids.dtype)
                    mask = torch.zeros_like(ids)
                ids[empty, 0] = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else self.tokenizer.pad_token_id
                mask[empty, 0] = 1
                ids, mask = self.pin(ids), self.pin(mask)
            batch[out] = (ids, mask, truncated)
        return batch

    def run_model(self, ids, mask, lengths):
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=self.options.layer != -1)
        h = out.last_hidden_state if self.options.layer == -1 else out.hidden_states[self.options.layer]
        m = mask.unsqueeze(-1).to(h.dtype)
        return ((h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1)).float()


class OpenClipOptions(TextOptions):
    model: str = Field(
        description="open_clip model: 'hf-hub:<repo>' (e.g. hf-hub:apple/DFN5B-CLIP-ViT-H-14-378, micro_diffusion's), "
        "'local-dir:<path>' (open_clip_config.json + weights), or a built-in name with `pretrained`; "
        "micro_diffusion's 'openclip:' prefix is accepted"
    )
    pretrained: str | None = Field(default=None, description="open_clip pretrained tag or weights file (built-in names only)")


def _import_open_clip():
    try:
        import open_clip
    except ImportError as e:
        raise RuntimeError(
            "encoder 'open-clip-text' needs open_clip, which is not installed: "
            "pip install 'mmprep-encoders[open-clip]' (package open_clip_torch)"
        ) from e
    return open_clip


class OpenClipTextEncoder(TextEncoder):
    """open_clip text token states after ln_final [77, D] (needs the open-clip extra)."""

    name = "open-clip-text"
    Options = OpenClipOptions
    suffix = "latents"
    model_class = "open_clip"

    def __init__(self, options=None, context=None):
        super().__init__(options, context)
        self.tower = None

    @property
    def model_name(self) -> str:
        m = self.options.model
        return m[len("openclip:"):] if m.startswith("openclip:") else m

    @property
    def config(self) -> dict[str, Any]:
        """open_clip's model_cfg (built-in, local-dir or the hub's open_clip_config.json; no weights)."""
        if self._config is None:
            cfg = _import_open_clip().get_model_config(self.model_name)
            if cfg is None:
                raise ValueError(f"open-clip-text: unknown open_clip model {self.options.model!r}")
            self._config = cfg
        return self._config

    def hidden_size(self) -> int:
        return int(self.config.get("text_cfg", {}).get("width", 512))

    def sample_shape(self):
        return [self.options.max_length, self.hidden_size()]

    def identity(self):
        o = self.options
        name = self.model_name
        if name.startswith(("local-dir:", "hf-hub:")):
            weights = weights_hash(name.split(":", 1)[1], None, o.revision)
        elif o.pretrained and Path(o.pretrained).is_file():
            weights = file_hash(Path(o.pretrained))
        else:
            weights = f"tag:{o.pretrained}"
        return {**self.base_identity(), "class": self.model_class, "model": name, "pretrained": o.pretrained,
                "weights": weights, "max_length": o.max_length}

    def load(self, device):
        import torch

        open_clip = _import_open_clip()
        name = self.model_name
        model, _, _ = open_clip.create_model_and_transforms(name, pretrained=self.options.pretrained)
        tower = model if hasattr(model, "token_embedding") else getattr(model, "text", None)
        parts = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        if tower is None or not all(hasattr(tower, a) for a in parts) or getattr(tower, "cls_emb", None) is not None:
            kind = type(getattr(model, "text", model)).__name__
            raise ValueError(
                f"open-clip-text: {name} has a {kind} text tower; only open_clip's own text transformer "
                "(CLIP, CustomTextCLIP without a CLS token) gives token states after ln_final"
            )
        context = int(tower.positional_embedding.shape[0])
        if self.options.max_length > context:
            raise ValueError(f"open-clip-text: max_length {self.options.max_length} exceeds {name}'s context length {context}")
        if hasattr(model, "visual"):
            model.visual = torch.nn.Identity()  # only the text tower is used: keep the image tower off the GPU
        self.model = model.eval().requires_grad_(False).to(device)
        self.tower = tower
        self.tokenizer = open_clip.get_tokenizer(name)

    def unload_extra(self) -> None:
        super().unload_extra()
        self.tower = None

    def tokenize(self, texts, padding="max_length"):
        """open_clip's tokenizer (fixed ``max_length``; pad id 0). A text that fills the whole
        context is checked with the tokenizer's own ``encode`` to tell a truncation from an
        exact fit."""
        import torch

        limit = self.options.max_length
        ids = self.tokenizer(texts, context_length=limit)
        truncated = (ids[:, -1] != 0).numpy().copy()
        encode = getattr(self.tokenizer, "encode", None)
        if encode is not None:
            for i in np.flatnonzero(truncated):
                truncated[i] = len(encode(texts[i])) + 2 > limit  # + start and end of text
        return self.pin(ids.long()), self.pin((ids != 0).to(torch.int64)), truncated

    def run_model(self, ids, mask, lengths):
        t = self.tower
        n = ids.shape[1]
        x = t.token_embedding(ids)
        cast = t.transformer.get_cast_dtype() if hasattr(t.transformer, "get_cast_dtype") else None
        if cast is not None:
            x = x.to(cast)
        x = x + t.positional_embedding[:n].to(x.dtype)
        attn = getattr(t, "attn_mask", None)
        x = t.transformer(x, attn_mask=None if attn is None else attn[:n, :n])
        return t.ln_final(x)
