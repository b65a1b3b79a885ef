"""The media stage: fetch images from any storage, decode safely, resize by policy, re-encode.

Configured by the pipeline's ``media:`` section (:class:`MediaOptions`). The engine calls
:meth:`MediaStage.process` once per work unit inside a worker process:

* input rows have ``key`` and ``image_path`` (local path, path relative to ``root``, or any
  fsspec URL; ``prefix_map`` rewrites first) and/or ``image_bytes`` (already loaded, e.g. from
  tar or MDS sources: only decode/check/resize);
* output rows have ``image_bytes`` (the final encoded image), ``width``/``height`` (original
  size after EXIF orientation), ``stored_width``/``stored_height``, ``image_format``,
  ``animated``, optionally the hash column and ``bucket_id``/``bucket_width``/``bucket_height``;
  failures set ``_reject_reason``/``_reject_message`` (see :data:`REASONS`). Rows that arrive
  already rejected are left untouched;
* every ``extra_image_columns`` entry (one path, or a list of paths, per row) is fetched and
  processed with the same policy into ``<column>_media`` (binary, or a list in the same
  order); any failing image rejects its row with the image's reason, the message naming the
  column and position (``input_paths[1]: ...``). They are fetched only for rows the main
  image did not reject.

Fetches run in a bounded thread pool (``threads``; ``per_host`` per host) ahead of decoding,
at most ``in_flight`` samples at a time, so a worker's memory is bounded by its in-flight
samples plus the unit's output. Decoding runs in the worker's main thread: CPU parallelism
comes from the engine's worker processes (OpenCV, when used, is set to one thread).
"""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

import polars as pl

from ..component import REJECT_MESSAGE, REJECT_REASON, Context
from ..errors import ConfigError
from ..storage import redact
from .decode import Reject, Result, opencv_available, process_image, raise_pillow_limit
from .fetch import RETRYABLE_REASONS, FetchError, Fetcher, FetchStats
from .options import MediaOptions, drop_masked, secret_values

#: Every rejection reason the media stage produces, with its meaning.
REASONS: dict[str, str] = {
    "missing_image": "the row has neither image bytes nor an image path",
    "http_404": "HTTP 404/410: the URL does not exist",
    "http_4xx": "another HTTP 4xx (403 forbidden, 401, 400 ...); not retried",
    "http_429": "rate limited (only seen while retrying; exhausted retries end as too_many_retries)",
    "http_5xx": "HTTP 5xx after all retries",
    "http_3xx": "a redirect without Location or too many redirects",
    "http_status": "an unexpected HTTP status (1xx/2xx other than 200)",
    "timeout": "connect/read/total timeout after all retries",
    "connection_error": "connection refused/reset, truncated body, other transport errors after all retries",
    "too_many_retries": "still rate limited (429) after all retries, or Retry-After above max_retry_after",
    "not_found": "local file or object-store key does not exist",
    "permission_denied": "local file or object not readable with the given credentials",
    "unsupported_url": "no fsspec implementation for the URL's protocol",
    "io_error": "another local I/O error",
    "too_large": "file above max_bytes, or longer side above max_side",
    "hash_mismatch": "the fetched bytes do not match the expected hash",
    "not_an_image": "empty file or not a recognised image format (e.g. an HTML page)",
    "decode_error": "corrupt or truncated image data",
    "decompression_bomb": "more pixels than max_pixels (checked on the header, before decoding)",
    "too_small": "shorter side below min_size",
    "bad_aspect_ratio": "aspect ratio above max_aspect_ratio",
    "animated": "animated image while animated: reject",
}

#: Suffix of the column the encoded images of an ``extra_image_columns`` entry go to.
EXTRA_SUFFIX = "_media"

__all__ = ["EXTRA_SUFFIX", "MediaStage", "MediaOptions", "RETRYABLE_REASONS", "REASONS", "Reject", "FetchError", "Fetcher", "process_image"]


class MediaStage:
    """Fetch, decode, check, resize and re-encode the images of every row."""

    name = "media"

    def __init__(self, options: MediaOptions, context: Context | None = None):
        self.options = options
        self.context = context or Context()
        o = options
        self._storage = drop_masked(o.storage_options)
        self._secrets = sorted(set(secret_values(o.storage_options)), key=len, reverse=True)
        self._buckets = o.bucket_list() if o.resize == "bucket" else None
        if o.resize_backend == "opencv" and not opencv_available():
            raise ConfigError("resize_backend: opencv needs the opencv-python-headless package (pip install 'mmprep[fast]'); use auto or pillow")
        self._fetcher: Fetcher | None = None
        self._lock = threading.Lock()
        #: Fetch statistics of the last :meth:`process` call (attempts, retries, seconds waited).
        self.last_stats: dict[str, Any] = {}
        if o.root is not None and "://" not in o.root:
            self._root = self.context.resolve(o.root)
        elif o.root is not None:
            self._root = o.root
        else:
            self._root = str(self.context.base_dir)

    @classmethod
    def from_config(cls, doc: dict[str, Any] | None, ctx: Context | None = None) -> "MediaStage":
        """Validate the ``media:`` section (pydantic ValidationError on bad options)."""
        return cls(MediaOptions.model_validate(doc or {}), ctx)

    def required_columns(self) -> list[str]:
        o = self.options
        extra = list(o.extra_image_columns)
        if o.input == "path":
            return [o.path_column, *extra]
        if o.input == "bytes":
            return [o.bytes_column, *extra]
        return extra

    # -- helpers -----------------------------------------------------------------------
    def scrub(self, text: str) -> str:
        """``text`` without URL user info or any credential value from storage_options."""
        text = redact(text)
        for s in self._secrets:
            text = text.replace(s, "***")
        return text

    def fetcher(self) -> Fetcher:
        with self._lock:
            if self._fetcher is None:
                o = self.options
                raise_pillow_limit(o.max_pixels)
                self._fetcher = Fetcher(
                    connect_timeout=o.connect_timeout,
                    read_timeout=o.read_timeout,
                    total_timeout=o.total_timeout,
                    retries=o.retries,
                    backoff=o.backoff,
                    max_backoff=o.max_backoff,
                    max_retry_after=o.max_retry_after,
                    user_agent=o.user_agent,
                    headers=dict(o.headers),
                    max_bytes=o.max_bytes,
                    per_host=o.per_host,
                    storage_options=self._storage,
                    proxy=o.proxy,
                    keep_alive=o.keep_alive,
                    no_proxy=tuple(o.no_proxy),
                    scrub=self.scrub,
                )
            return self._fetcher

    def resolve_expr(self, col: str) -> pl.Expr:
        """Vectorised path resolution: prefix_map rewrites (longest first), then ``root``."""
        e = pl.col(col).cast(pl.String)
        pm = sorted(self.options.prefix_map.items(), key=lambda kv: len(kv[0]), reverse=True)
        if pm:
            rewritten = e
            for old, new in reversed(pm):  # build so the longest prefix is tested first
                rewritten = pl.when(e.str.starts_with(old)).then(pl.lit(new) + e.str.slice(len(old))).otherwise(rewritten)
            e = rewritten
        root = self._root.rstrip("/")
        absolute = e.str.contains("://", literal=True) | e.str.starts_with("/")
        return pl.when(absolute).then(e).otherwise(pl.lit(root + "/") + e.str.replace(r"^(\./)+", ""))

    # -- the stage ---------------------------------------------------------------------
    def process(self, df: pl.DataFrame) -> pl.DataFrame:
        """Fetch/decode/check/resize/encode every row not already rejected (see module doc)."""
        o = self.options
        n = df.height
        has_bytes = o.bytes_column in df.columns and o.input != "path"
        has_path = o.path_column in df.columns and o.input != "bytes"
        if not has_bytes and not has_path:
            need = {"auto": f"{o.bytes_column!r} or {o.path_column!r}", "path": repr(o.path_column), "bytes": repr(o.bytes_column)}[o.input]
            raise KeyError(f"media stage: the rows need column {need} (have {df.columns})")
        raise_pillow_limit(o.max_pixels)

        prior = df[REJECT_REASON].to_list() if REJECT_REASON in df.columns else [None] * n
        prior_msg = df[REJECT_MESSAGE].to_list() if REJECT_MESSAGE in df.columns else [None] * n
        data_in = df[o.bytes_column].to_list() if has_bytes else [None] * n
        paths = df.select(self.resolve_expr(o.path_column)).to_series().to_list() if has_path else [None] * n
        expected = None
        if o.verify_hash_column:
            if o.verify_hash_column not in df.columns:
                raise KeyError(f"media stage: verify_hash_column {o.verify_hash_column!r} not in the rows (have {df.columns})")
            expected = df[o.verify_hash_column].cast(pl.String).to_list()

        results: list[Result | None] = [None] * n
        reasons: list[str | None] = list(prior)
        messages: list[str | None] = list(prior_msg)
        hashes: list[str | None] = [None] * n
        stats = FetchStats()

        def finish(i: int, data: bytes | None, err: FetchError | None) -> None:
            if err is not None:
                reasons[i], messages[i] = err.reason, self.scrub(err.message)
                return
            if o.hash:
                digest = hashlib.new(o.hash, data).hexdigest()
                hashes[i] = digest
                if expected is not None and expected[i] is not None and expected[i].strip().lower() != digest:
                    reasons[i], messages[i] = "hash_mismatch", f"{o.hash} {digest} != expected {expected[i].strip().lower()}"
                    return
            try:
                results[i] = process_image(data, o, self._buckets)
            except Reject as r:
                reasons[i], messages[i] = r.reason, self.scrub(r.message)

        todo: list[tuple[int, str]] = []
        for i in range(n):
            if prior[i] is not None:
                continue
            if data_in[i] is not None:
                continue  # decoded below, in order with the fetched ones
            if paths[i] is None:
                reasons[i], messages[i] = "missing_image", "no image bytes and no image path"
                continue
            todo.append((i, paths[i]))

        # rows that already carry bytes
        for i in range(n):
            if prior[i] is None and data_in[i] is not None:
                finish(i, data_in[i], None)

        self._fetch_all(todo, finish, stats)
        fetched = len(todo)
        extra_cols = []
        for c in o.extra_image_columns:
            series, n_fetched = self._extra_images(df, c, reasons, messages, stats)
            extra_cols.append(series)
            fetched += n_fetched
        self.last_stats = {"fetched": fetched, "attempts": stats.attempts, "retries": stats.retries, "waited_s": round(stats.waited, 3)}
        out = self._frame(df, results, reasons, messages, hashes, prior, data_in)
        return out.with_columns(extra_cols) if extra_cols else out

    def _fetch_all(self, todo: list[tuple[int, str]], finish, stats: FetchStats) -> None:
        """Fetch every ``(slot, url)`` of ``todo`` on the thread pool, at most ``in_flight`` at a
        time, and call ``finish(slot, data, error)`` on this thread as each fetch completes.

        Completion order, not ``todo`` order: a URL that times out (``read_timeout`` × attempts)
        must not hold back the window behind it, or every slow host stalls the whole unit.
        ``finish`` writes by slot, so the result does not depend on the order."""
        if not todo:
            return
        o = self.options
        fetcher = self.fetcher()
        window = o.in_flight or 2 * o.threads

        def job(url: str) -> tuple[bytes | None, FetchError | None, FetchStats]:
            st = FetchStats()
            try:
                return fetcher.fetch(url, st), None, st
            except FetchError as e:
                return None, e, st
            except Exception as e:  # never let one sample fail the unit
                return None, FetchError("connection_error", f"{type(e).__name__}: {self.scrub(str(e))[:300]}"), st

        with ThreadPoolExecutor(max_workers=min(o.threads, len(todo)), thread_name_prefix="mmprep-fetch") as pool:
            it = iter(todo)
            running: dict = {}

            def submit() -> None:
                nxt = next(it, None)
                if nxt is not None:
                    running[pool.submit(job, nxt[1])] = nxt[0]

            for _ in range(window):
                submit()
            while running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    i = running.pop(fut)
                    data, err, st = fut.result()
                    stats.attempts += st.attempts
                    stats.retries += st.retries
                    stats.waited += st.waited
                    submit()
                    finish(i, data, err)
                    del data

    def _extra_images(self, df: pl.DataFrame, col: str, reasons: list, messages: list, stats: FetchStats) -> tuple[pl.Series, int]:
        """Materialise one of ``extra_image_columns`` for the rows still accepted: returns the
        ``<col>_media`` series and the number of images fetched; failures reject their row."""
        o = self.options
        if col not in df.columns:
            # a partitioned source's rows (their columns are only known here)
            raise KeyError(f"media stage: extra_image_columns entry {col!r} not in the rows (have {df.columns})")
        dtype = df.schema[col]
        out_name = f"{col}{EXTRA_SUFFIX}"
        c = pl.col(col)
        if isinstance(dtype, (pl.List, pl.Array)):
            is_list, values = True, c.cast(pl.List(pl.String))
        elif dtype in (pl.String, pl.Categorical, pl.Null):
            c = c.cast(pl.String)
            # a column of JSON-encoded lists ('["a.jpg", "b.jpg"]', as LaViDa-O parquets have) is a list column
            is_list = bool(df.select(c.str.starts_with("[").any()).item())
            values = (
                pl.when(c.is_null()).then(pl.lit(None, dtype=pl.List(pl.String)))
                .when(c.str.starts_with("[")).then(c.str.json_decode(pl.List(pl.String)))
                .otherwise(pl.concat_list([c]))
            ) if is_list else c
        else:
            raise KeyError(f"media stage: extra image column {col!r} must hold paths (a string or a list of strings), not {dtype}")
        # one row per image: (row, position, resolved path); null/empty lists contribute none
        flat = df.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("_row"), values.alias(col))
        null_rows = flat[col].is_null().to_list()
        if is_list:
            flat = flat.filter(pl.col(col).list.len() > 0).explode(col)
        else:
            flat = flat.filter(pl.col(col).is_not_null())
        flat = flat.with_columns(pl.int_range(pl.len()).over("_row").alias("_pos"), self.resolve_expr(col).alias("_url"))
        rows, pos, urls = flat["_row"].to_list(), flat["_pos"].to_list(), flat["_url"].to_list()
        data: list[bytes | None] = [None] * len(rows)

        failed_at: dict[int, int] = {}  # row -> image (index k) whose failure names the row

        def named(k: int) -> bool:
            """Whether image k can still decide the row's outcome: the row has not failed, or
            failed only on a later image of this column (fetches complete in any order, and
            the row's first failing image, by position, names it)."""
            r = rows[k]
            return reasons[r] is None or k < failed_at.get(r, -1)

        def fail(k: int, reason: str, message: str) -> None:
            if named(k):
                r = rows[k]
                failed_at[r] = k
                where = f"{col}[{pos[k]}]" if is_list else col
                reasons[r], messages[r] = reason, f"{where}: {message}"

        def finish(k: int, raw: bytes | None, err: FetchError | None) -> None:
            if not named(k):
                return  # an earlier image of this row failed: no work for this one
            if err is not None:
                fail(k, err.reason, self.scrub(err.message))
                return
            try:
                data[k] = process_image(raw, o, self._buckets).data
            except Reject as e:
                fail(k, e.reason, self.scrub(e.message))

        todo = []
        for k, (r, url) in enumerate(zip(rows, urls)):
            if reasons[r] is not None:
                continue
            if url is None:
                fail(k, "missing_image", "null path in the list")
                continue
            todo.append((k, url))
        self._fetch_all(todo, finish, stats)
        n = df.height
        if not is_list:
            values: list[Any] = [None] * n
            for r, d in zip(rows, data):
                values[r] = d
            return pl.Series(out_name, values, dtype=pl.Binary), len(todo)
        lists: list[Any] = [None if null else [] for null in null_rows]
        for r, d in zip(rows, data):
            lists[r].append(d)
        return pl.Series(out_name, lists, dtype=pl.List(pl.Binary)), len(todo)

    def _frame(self, df, results, reasons, messages, hashes, prior, data_in) -> pl.DataFrame:
        o = self.options

        def col(get, dtype):
            return pl.Series([get(r) if r is not None else None for r in results], dtype=dtype)

        image = [r.data if r is not None else (data_in[i] if prior[i] is not None else None) for i, r in enumerate(results)]
        cols = [
            pl.Series(o.bytes_column, image, dtype=pl.Binary),
            col(lambda r: r.width, pl.Int64).alias("width"),
            col(lambda r: r.height, pl.Int64).alias("height"),
            col(lambda r: r.stored_width, pl.Int64).alias("stored_width"),
            col(lambda r: r.stored_height, pl.Int64).alias("stored_height"),
            col(lambda r: r.format, pl.String).alias("image_format"),
            col(lambda r: r.animated, pl.Boolean).alias("animated"),
            pl.Series(REJECT_REASON, reasons, dtype=pl.String),
            pl.Series(REJECT_MESSAGE, messages, dtype=pl.String),
        ]
        if o.hash:
            cols.append(pl.Series(o.hash_col(), hashes, dtype=pl.String))
        if self._buckets is not None:
            b = self._buckets
            cols.append(col(lambda r: r.bucket, pl.Int64).alias("bucket_id"))
            cols.append(col(lambda r: b[r.bucket][0] if r.bucket is not None else None, pl.Int64).alias("bucket_width"))
            cols.append(col(lambda r: b[r.bucket][1] if r.bucket is not None else None, pl.Int64).alias("bucket_height"))
        if any(p is not None for p in prior):
            # rows rejected before this stage keep whatever they had
            keep = pl.Series([p is not None for p in prior])
            fixed = []
            for c in cols:
                if c.name in df.columns and c.name not in (o.bytes_column, REJECT_REASON, REJECT_MESSAGE):
                    c = pl.select(pl.when(keep).then(df[c.name].cast(c.dtype, strict=False)).otherwise(c)).to_series().alias(c.name)
                fixed.append(c)
            cols = fixed
        return df.with_columns(cols)
