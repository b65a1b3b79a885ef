"""How encoder outputs become columns: one buffer per column, nulls for rejected samples,
chunked binary arrays, variable-length rows, declared shapes enforced, two batches in flight."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from mmprep import REJECT_MESSAGE, REJECT_REASON, Context
from mmprep_encoders import base
from mmprep_encoders.base import EncoderOptions, Ragged, TorchEncoder


class Toy(TorchEncoder):
    """Test encoder: sample i's output is a function of its value x (NaN for x < 0)."""

    name = "toy"
    Options = EncoderOptions

    def __init__(self, shape, ragged=False, as_list=False, wrong_shape=False, **kw):
        super().__init__(EncoderOptions(**{"storage_dtype": "float32", "dtype": "float32", **kw}), Context())
        self.shape, self.ragged, self.as_list, self.wrong_shape = shape, ragged, as_list, wrong_shape
        self.forwards = 0

    def output_columns(self):
        return {"y": {"dtype": self.options.storage_dtype, "shape": self.shape}}

    def load(self, device):
        self.model = object()

    def reject_rows(self, df):
        reasons = ["too_small_for_encoder" if x == 99 else None for x in df["x"]]
        return reasons, [None if r is None else "x is 99" for r in reasons]

    def prepare(self, rows):
        import torch

        return {"x": torch.tensor(rows["x"].to_numpy(), dtype=torch.float32)}

    def forward(self, batch):
        import torch

        self.forwards += 1
        x = batch["x"]
        fixed = [d if d is not None else 3 for d in self.shape]
        if self.wrong_shape:
            fixed = [d + 1 for d in fixed]
        y = x.reshape(-1, *([1] * len(fixed))) * torch.ones((len(x), *fixed)) + torch.arange(int(np.prod(fixed))).reshape(fixed)
        y = torch.where(x.reshape(-1, *([1] * len(fixed))) < 0, torch.full_like(y, float("nan")), y)
        if self.ragged:
            lengths = (x.abs().long() % 3) + 1  # 1..3 rows
            if self.as_list:
                return {"y": [y[i, : int(n)] for i, n in enumerate(lengths)]}
            return {"y": Ragged(y, lengths)}
        return {"y": y}


def expected(x, shape):
    fixed = [d if d is not None else 3 for d in shape]
    return x + np.arange(int(np.prod(fixed)), dtype=np.float32).reshape(fixed)


XS = [0, 1, -1, 2, 99, 3, 4, -2, 5, 6, 7]


def frame():
    return pl.DataFrame({"key": [f"k{i}" for i in range(len(XS))], "x": XS})


@pytest.mark.parametrize("batch_size", [1, 3, 64])
@pytest.mark.parametrize("output", ["bytes", "array"])
def test_fixed_shape_column_with_rejects_and_nans(batch_size, output):
    enc = Toy([2, 3], batch_size=batch_size, output=output)
    out = enc.encode(frame())
    assert enc.forwards == -(-10 // batch_size)  # 10 samples reach the model (x = 99 is refused first)
    reasons = out[REJECT_REASON].to_list()
    assert [r for r in reasons] == [None, None, "non_finite", None, "too_small_for_encoder", None, None, "non_finite", None, None, None]
    for i, x in enumerate(XS):
        v = out["y"][i]
        if reasons[i] is not None:
            assert v is None
            continue
        got = np.frombuffer(v, "<f4").reshape(2, 3) if output == "bytes" else np.asarray(v.to_list() if hasattr(v, "to_list") else v, np.float32)
        np.testing.assert_array_equal(got, expected(x, [2, 3]))
    if output == "array":
        assert out.schema["y"] == pl.Array(pl.Float32, (2, 3))
    assert enc.stats() == {"encoded": 10, "non_finite": 2}


def test_binary_column_is_split_into_int32_chunks(monkeypatch):
    monkeypatch.setattr(base, "CHUNK_BYTES", 3 * 24)  # three 24-byte samples per Arrow chunk
    out = Toy([2, 3], batch_size=4).encode(frame())
    assert out["y"].n_chunks() == 4  # 11 rows, 3 per chunk
    monkeypatch.setattr(base, "CHUNK_BYTES", 2**31 - 1)
    whole = Toy([2, 3], batch_size=4).encode(frame())
    assert whole["y"].n_chunks() == 1
    assert out["y"].to_list() == whole["y"].to_list()
    assert pl.read_parquet(_roundtrip(out))["y"].to_list() == out["y"].to_list()


def _roundtrip(df):
    import io

    buf = io.BytesIO()
    df.write_parquet(buf)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("as_list", [False, True])
@pytest.mark.parametrize("output", ["bytes", "array"])
def test_variable_length_rows(as_list, output):
    out = Toy([None, 4], ragged=True, as_list=as_list, batch_size=3, output=output).encode(frame())
    for i, x in enumerate(XS):
        v = out["y"][i]
        if x < 0 or x == 99:
            assert v is None
            continue
        n = abs(x) % 3 + 1
        got = np.frombuffer(v, "<f4").reshape(-1, 4) if output == "bytes" else np.asarray(v.to_list(), np.float32)
        np.testing.assert_array_equal(got, expected(x, [3, 4])[:n])
    if output == "array":
        assert out.schema["y"] == pl.List(pl.Array(pl.Float32, 4))


def test_nan_in_the_padding_of_a_ragged_row_does_not_reject_it():
    class PadNan(Toy):
        def forward(self, batch):
            import torch

            y = torch.ones((len(batch["x"]), 3, 4))
            y[:, 2] = float("nan")  # padding beyond length 2; the sample x = 0 also has a NaN inside
            y[batch["x"] == 0, 1, 0] = float("nan")
            return {"y": Ragged(y, [2] * len(batch["x"]))}

    out = PadNan([None, 4], batch_size=4).encode(frame())
    assert out[REJECT_REASON].to_list() == ["non_finite", None, None, None, "too_small_for_encoder"] + [None] * 6
    assert np.frombuffer(out["y"][1], "<f4").tolist() == [1.0] * 8


def test_an_output_of_another_shape_than_declared_is_a_clear_error():
    with pytest.raises(ValueError, match=r"toy: output 'y' has shape \[3, 4\] per sample, declared \[2, 3\]"):
        Toy([2, 3], wrong_shape=True).encode(frame())


def test_no_rows_and_all_rejected():
    empty = Toy([2]).encode(frame().head(0))
    assert empty.height == 0 and empty.schema["y"] == pl.Binary
    rejected = Toy([2]).encode(frame().filter(pl.col("x") == 99))
    assert rejected["y"].to_list() == [None] and rejected[REJECT_REASON].to_list() == ["too_small_for_encoder"]


def test_finiteness_is_checked_on_the_stored_values():
    """3e38 + 3e38 overflows a float32 sum but both values are finite: kept. 1e5 is finite in
    float32 but inf once stored as float16: rejected, never stored as inf."""
    big = pl.DataFrame({"key": ["a", "b"], "x": [3e38, 1e5]})
    kept = Toy([2], storage_dtype="float32").encode(big)
    assert REJECT_REASON not in kept.columns  # nothing rejected
    assert np.frombuffer(kept["y"][0], "<f4").tolist() == [np.float32(3e38), np.float32(3e38) + 1]
    half = Toy([2], storage_dtype="float16").encode(big)
    assert half[REJECT_REASON].to_list() == ["non_finite", "non_finite"]
    assert half[REJECT_MESSAGE].to_list() == ["toy: y has NaN/inf values (as float16)"] * 2
    small = Toy([2], storage_dtype="float16").encode(pl.DataFrame({"key": ["c"], "x": [60000.0]}))
    assert REJECT_REASON not in small.columns and np.frombuffer(small["y"][0], "<f2").tolist() == [60000.0, 60000.0]
