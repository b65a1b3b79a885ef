from __future__ import annotations

import subprocess
import sys

import numpy as np
import polars as pl
import pytest

from mmprep import Context, REJECT_REASON
from mmprep_encoders.custom import CustomEncoder
from mmprep_encoders.text import ClipTextEncoder, LlmMeanEncoder, OpenClipTextEncoder, T5TextEncoder

LONG = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)
TEXTS = ["a photo of a cat", "", "two dogs playing in the snow at night", LONG, None]


def frame(texts=TEXTS, other=None):
    d = {"key": [f"k{i}" for i in range(len(texts))], "caption": texts}
    if other is not None:
        d["long_caption"] = other
    return pl.DataFrame(d, schema={k: pl.String for k in d})


def build(klass, **kw):
    enc = klass(klass.Options(**{"dtype": "float32", "storage_dtype": "float32", **kw}), Context())
    enc.setup("cpu")
    return enc


def arrays(df, col, shape):
    return [None if b is None else np.frombuffer(b, dtype="<f4").reshape(shape) for b in df[col]]


def test_clip_matches_transformers_two_columns_pooled_truncation(models):
    import torch
    from transformers import AutoTokenizer, CLIPTextModel

    other = ["long " + t if t else t for t in TEXTS]
    enc = build(ClipTextEncoder, model=str(models["clip"]), columns=["caption", "long_caption"],
                outputs=["caption_latents", "long_latents"], pooled=True, batch_size=2, truncation_column=True)
    out = enc.encode(frame(TEXTS, other))
    cols = enc.output_columns()
    assert cols["caption_latents"] == {"dtype": "float32", "shape": [77, 32]}
    assert cols["long_latents_pooled"] == {"dtype": "float32", "shape": [32]}
    tok = AutoTokenizer.from_pretrained(str(models["clip"]))
    model = CLIPTextModel.from_pretrained(str(models["clip"])).eval()
    for col, texts in (("caption_latents", TEXTS), ("long_latents", other)):
        ids = tok([t or "" for t in texts], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        with torch.no_grad():
            ref = model(input_ids=ids["input_ids"])
        got = np.stack(arrays(out, col, [77, 32]))
        np.testing.assert_allclose(got, ref.last_hidden_state.numpy(), rtol=1e-5, atol=1e-5)
        pooled = np.stack(arrays(out, col + "_pooled", [32]))
        np.testing.assert_allclose(pooled, ref.pooler_output.numpy(), rtol=1e-5, atol=1e-5)
    assert out["caption_latents_truncated"].to_list() == [False, False, False, True, False]
    assert enc.stats()["truncated"] == 2 and enc.stats()["encoded"] == 5
    assert REJECT_REASON not in out.columns


@pytest.mark.parametrize("kind,klass", [("clip", ClipTextEncoder), ("t5", T5TextEncoder), ("lm", LlmMeanEncoder)])
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_tokenize_equals_the_tokenizers_own_truncation_and_padding(models, kind, klass, padding_side):
    """One pass + re-tokenising only the long texts gives exactly tokenizer(..., truncation=True),
    for max_length and longest padding, on either padding side, with exact truncation flags."""
    enc = build(klass, model=str(models[kind]), max_length=12)
    tok = enc.tokenizer
    tok.padding_side = padding_side
    words = "the quick brown fox jumps over a lazy dog at night".split()
    rng = np.random.default_rng(1)
    texts = ["", "a"] + [" ".join(rng.choice(words, size=int(n))) for n in rng.integers(1, 9, size=40)]
    full = [len(x) for x in tok(texts, truncation=False, verbose=False)["input_ids"]]
    for padding in ("max_length", "longest"):
        ids, mask, truncated = enc.tokenize(texts, padding=padding)
        ref = tok(texts, max_length=12, padding=padding, truncation=True, return_tensors="np")
        np.testing.assert_array_equal(ids.numpy(), ref["input_ids"])
        np.testing.assert_array_equal(mask.numpy(), ref["attention_mask"])
        assert truncated.tolist() == [n > 12 for n in full]
    assert any(n > 12 for n in full) and any(n <= 12 for n in full)


def test_t5_pad_stripping_and_store_pad_tokens(models):
    import torch
    from transformers import AutoTokenizer, T5EncoderModel

    stripped = build(T5TextEncoder, model=str(models["t5"]), max_length=16, batch_size=3).encode(frame())
    padded_enc = build(T5TextEncoder, model=str(models["t5"]), max_length=16, store_pad_tokens=True)
    padded = padded_enc.encode(frame())
    assert padded_enc.output_columns() == {"caption_t5": {"dtype": "float32", "shape": [16, 32]}}
    tok = AutoTokenizer.from_pretrained(str(models["t5"]))
    model = T5EncoderModel.from_pretrained(str(models["t5"])).eval()
    ids = tok([t or "" for t in TEXTS], padding="max_length", max_length=16, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**ids).last_hidden_state.numpy()
    lengths = ids["attention_mask"].sum(1).tolist()
    assert 1 <= lengths[1] < lengths[0] < 16 and lengths[3] == 16
    got_s = arrays(stripped, "caption_t5", [-1, 32])
    got_p = arrays(padded, "caption_t5", [16, 32])
    for i, n in enumerate(lengths):
        assert got_s[i].shape == (n, 32)
        np.testing.assert_allclose(got_s[i], ref[i, :n], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got_p[i], ref[i], rtol=1e-5, atol=1e-5)


def test_t5_array_output_variable_length(models):
    enc = build(T5TextEncoder, model=str(models["t5"]), max_length=16, output="array")
    out = enc.encode(frame(TEXTS[:3]))
    assert out.schema["caption_t5"] == pl.List(pl.Array(pl.Float32, 32))
    assert [len(x) for x in out["caption_t5"].to_list()] == [len(b) // 128 for b in
                                                              build(T5TextEncoder, model=str(models["t5"]), max_length=16).encode(frame(TEXTS[:3]))["caption_t5"]]


def test_llm_mean_pooling_matches_manual(models):
    import torch
    from transformers import AutoModel, AutoTokenizer

    enc = build(LlmMeanEncoder, model=str(models["lm"]), max_length=24, batch_size=2)
    out = enc.encode(frame())
    assert enc.output_columns() == {"caption_embedding": {"dtype": "float32", "shape": [32]}}
    assert enc.tokenizer.pad_token == "<|endoftext|>"  # no pad token: falls back to EOS
    tok = AutoTokenizer.from_pretrained(str(models["lm"]))
    model = AutoModel.from_pretrained(str(models["lm"])).eval()
    got = np.stack(arrays(out, "caption_embedding", [32]))
    for i, t in enumerate(TEXTS):
        ids = tok([t or tok.eos_token], max_length=24, truncation=True, return_tensors="pt")  # empty -> EOS alone
        with torch.no_grad():
            # input_ids + mask only (GPT-2 would add wte[token_type_ids] if the tokenizer's zeros were passed)
            h = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state[0]
        np.testing.assert_allclose(got[i], h.mean(0).numpy(), rtol=1e-4, atol=1e-5)
    assert enc.stats()["truncated"] == 1


def test_open_clip_text_needs_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # as if not installed
    enc = OpenClipTextEncoder(OpenClipTextEncoder.Options(model="hf-hub:apple/DFN5B-CLIP-ViT-H-14"), Context())
    with pytest.raises(RuntimeError, match=r"mmprep-encoders\[open-clip\]"):
        enc.setup("cpu")


@pytest.fixture(scope="module")
def open_clip_dir(tmp_path_factory):
    """A tiny open_clip CLIP saved as a local-dir model (open_clip_config.json + safetensors),
    the layout of an open_clip hf-hub repo: loaded through the same factory path."""
    open_clip = pytest.importorskip("open_clip")
    import json

    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("open_clip_tiny")
    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}}
    (d / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.manual_seed(0)
    model = open_clip.CLIP(**cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "open_clip_model.safetensors"))
    return d


def test_open_clip_text_matches_micro_diffusions_forward(open_clip_dir):
    """All 77 token states after ln_final, as micro_diffusion's openclip_text_encoder computes
    them; the 'openclip:' prefix is accepted; truncation is told apart from an exact fit."""
    import open_clip
    import torch

    name = f"local-dir:{open_clip_dir}"
    exact = " ".join(["cat"] * 75)  # start + 75 tokens + end: fills the context without truncation
    texts = ["a photo of a cat", "", LONG, exact, None]
    enc = build(OpenClipTextEncoder, model=f"openclip:{name}", batch_size=2, truncation_column=True)
    assert enc.output_columns() == {"caption_latents": {"dtype": "float32", "shape": [77, 32]}}
    out = enc.encode(frame(texts))
    assert out["caption_latents_truncated"].to_list() == [False, False, True, False, False]
    assert enc.stats() == {"encoded": 5, "non_finite": 0, "truncated": 1}
    assert enc.identity()["weights"].startswith("sha256:") and enc.identity()["model"] == name

    m, _, _ = open_clip.create_model_and_transforms(name)
    m.eval()
    ids = open_clip.get_tokenizer(name)([t or "" for t in texts])
    with torch.no_grad():
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(ids).to(cast) + m.positional_embedding.to(cast)
        ref = m.ln_final(m.transformer(x, attn_mask=m.attn_mask)).numpy()
        pooled = m.encode_text(ids).numpy()
    got = np.stack(arrays(out, "caption_latents", [77, 32]))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
    # the EOT state projected is open_clip's own text embedding: same model, same weights
    eot = ids.argmax(-1).numpy()
    np.testing.assert_allclose(got[np.arange(5), eot] @ m.text_projection.detach().numpy(), pooled, rtol=1e-4, atol=1e-5)


def test_open_clip_text_refuses_a_longer_context(open_clip_dir):
    enc = OpenClipTextEncoder(OpenClipTextEncoder.Options(model=f"local-dir:{open_clip_dir}", max_length=100), Context())
    with pytest.raises(ValueError, match="exceeds .* context length 77"):
        enc.setup("cpu")


class NanInjector:
    """CLIP wrapper returning NaN states for texts containing 'poison' (test helper)."""

    def __init__(self, path):
        from transformers import AutoTokenizer, CLIPTextModel

        self.tok = AutoTokenizer.from_pretrained(path)
        self.model = CLIPTextModel.from_pretrained(path).eval()

    def to(self, device):
        self.model.to(device)
        return self

    def encode(self, texts):
        ids = self.tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
        h = self.model(**ids).last_hidden_state.clone()
        for i, t in enumerate(texts):
            if "poison" in t:
                h[i, 3, 5] = float("nan")
        return h


class MaskedStates:
    """Returns (states, mask) like NeMo's T5 encoders (test helper)."""

    def __call__(self, texts):
        import torch

        n = [len(t.split()) + 1 for t in texts]
        L = max(n)
        states = torch.arange(len(texts) * L * 3, dtype=torch.float32).reshape(len(texts), L, 3)
        mask = torch.tensor([[1] * k + [0] * (L - k) for k in n])
        return states, mask


def test_custom_class_non_finite_rejects_only_that_sample(models):
    enc = build(CustomEncoder, cls=f"{__name__}.NanInjector", kwargs={"path": str(models["clip"])},
                output="caption_latents", shape=[77, 32], batch_size=4)
    texts = ["a cat", "poison apple", "a dog", "a bird", "a fish"]
    out = enc.encode(frame(texts))
    assert out[REJECT_REASON].to_list() == [None, "non_finite", None, None, None]
    assert out["caption_latents"][1] is None and all(out["caption_latents"][i] is not None for i in (0, 2, 3, 4))
    assert "NaN" in out["_reject_message"][1]
    assert enc.stats()["non_finite"] == 1


def test_custom_masked_pair_pad_stripping():
    enc = build(CustomEncoder, cls=f"{__name__}:MaskedStates", output="enc", shape=[None, 3], store_pad_tokens=False)
    out = enc.encode(frame(["a b", "a b c d", "x"]))
    shapes = [len(b) // 12 for b in out["enc"]]
    assert shapes == [3, 5, 2]


def test_module_import_is_cheap():
    code = "import sys, mmprep_encoders; bad=[m for m in ('torch','diffusers','transformers') if m in sys.modules]; print(bad)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


def test_identity_text(models):
    a = ClipTextEncoder(ClipTextEncoder.Options(model=str(models["clip"])), Context()).identity()
    b = ClipTextEncoder(ClipTextEncoder.Options(model=str(models["clip"])), Context()).identity()
    assert a == b and a["class"] == "transformers.CLIPTextModel" and a["max_length"] == 77
    assert a["outputs"] == {"caption_latents": {"dtype": "float16", "shape": [77, 32]}}
    t = T5TextEncoder(T5TextEncoder.Options(model=str(models["t5"])), Context()).identity()
    assert t["store_pad_tokens"] is False and t["outputs"]["caption_t5"]["shape"] == [None, 32]
