"""Options of the media stage (the pipeline's ``media:`` section)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, SerializationInfo, field_serializer, field_validator, model_validator

from ..component import Options
from ..storage import MASK, SECRET_KEYS, mask_secrets, redact, secret_values  # noqa: F401  (re-exported)
from .fetch import check_proxy_url

#: Named bucket lists. ``sdxl``: the ~1 megapixel (1024²) buckets SDXL was trained on.
BUCKET_PRESETS: dict[str, list[tuple[int, int]]] = {
    "sdxl": [
        (512, 2048), (512, 1984), (512, 1920), (512, 1856), (576, 1792), (576, 1728), (576, 1664),
        (640, 1600), (640, 1536), (704, 1472), (704, 1408), (704, 1344), (768, 1344), (768, 1280),
        (832, 1216), (832, 1152), (896, 1152), (896, 1088), (960, 1088), (960, 1024), (1024, 1024),
        (1024, 960), (1088, 960), (1088, 896), (1152, 896), (1152, 832), (1216, 832), (1280, 768),
        (1344, 768), (1408, 704), (1472, 704), (1536, 640), (1600, 640), (1664, 576), (1728, 576),
        (1792, 576), (1856, 512), (1920, 512), (1984, 512), (2048, 512),
    ],
}

def drop_masked(obj: Any) -> Any:
    """Remove values that are the mask (a rebuilt stage then uses the ambient credentials)."""
    if isinstance(obj, dict):
        return {k: drop_masked(v) for k, v in obj.items() if v != MASK}
    return obj


class MediaOptions(Options):
    """Fetch, decode, check, resize and re-encode the images of every row."""

    # -- input -------------------------------------------------------------------------
    input: Literal["auto", "path", "bytes"] = Field(
        default="auto",
        description="Where the image comes from: 'path' fetches image_path, 'bytes' decodes image_bytes, "
        "'auto' uses image_bytes where it is set and fetches image_path otherwise",
    )
    path_column: str = Field(default="image_path", description="Column with the image location (path or fsspec URL)")
    bytes_column: str = Field(default="image_bytes", description="Column with already loaded image bytes (input) and the encoded image (output)")
    extra_image_columns: list[str] = Field(
        default_factory=list,
        description="More image columns to materialise with the same fetch/check/resize/encode policy: each holds "
        "one path or a list of paths per row (multi-image samples, edit inputs/targets); the encoded images go to "
        "'<column>_media' (binary, or a list in the same order). A row is rejected when any of its images fails "
        "(the image's reason; the message names the column and position); null or empty values stay null/empty",
    )
    root: str | None = Field(
        default=None,
        description="Prefix for relative image paths: a local directory (relative to the pipeline file) or a URL prefix "
        "such as s3://bucket/images/; default: the pipeline file's directory",
    )
    prefix_map: dict[str, str] = Field(
        default_factory=dict,
        description="URL rewrites applied before fetching, longest matching prefix first "
        "(e.g. {'s3://their-bucket/': '/mnt/mirror/'})",
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec options for remote paths (credentials, endpoint_url via client_kwargs); "
        "credential values are masked in the manifest and never appear in messages",
    )

    # -- fetch -------------------------------------------------------------------------
    threads: int = Field(default=16, ge=1, le=512, description="Concurrent fetches per worker process")
    per_host: int = Field(default=8, ge=1, description="Concurrent fetches per host (per worker process)")
    in_flight: int | None = Field(
        default=None, ge=1,
        description="Samples fetched ahead of decoding per worker (memory bound); default 2 × threads",
    )
    connect_timeout: float = Field(default=10.0, gt=0, description="Seconds to open a connection")
    read_timeout: float = Field(default=30.0, gt=0, description="Seconds without data before a read fails")
    total_timeout: float = Field(default=120.0, gt=0, description="Seconds for one whole download attempt")
    retries: int = Field(default=3, ge=0, description="Extra attempts after a retryable failure (5xx, 408, 429, timeout, connection error)")
    backoff: float = Field(default=0.5, ge=0, description="Base of the exponential backoff in seconds (×2 per attempt, with jitter)")
    max_backoff: float = Field(default=30.0, ge=0, description="Upper bound of one backoff wait")
    max_retry_after: float = Field(
        default=60.0, ge=0,
        description="Longest Retry-After (429/503) honoured; a longer one ends the sample as too_many_retries",
    )
    user_agent: str = Field(default="mmprep/0.1 (+image-text dataset preparation)", description="HTTP User-Agent header")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra HTTP request headers")
    keep_alive: bool = Field(
        default=True,
        description="Reuse HTTP(S) connections per host (saves the TCP and TLS handshakes); an idle connection the "
        "server has closed is detected before reuse",
    )
    proxy: str = Field(
        default="env",
        description="HTTP(S) proxy: 'env' honours HTTP_PROXY/HTTPS_PROXY/NO_PROXY (loopback hosts are never proxied), "
        "'none' connects directly, or an http://[user:password@]host[:port] URL for every http(s) host not in "
        "no_proxy. HTTPS goes through a CONNECT tunnel; credentials are masked wherever config is stored",
    )
    no_proxy: list[str] = Field(
        default_factory=list,
        description="Hosts an explicit proxy is not used for (NO_PROXY syntax: host, .domain, host:port, CIDR, '*')",
    )
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1, description="Largest accepted file; bigger ones are rejected as too_large")
    hash: Literal["sha256", "md5"] | None = Field(default=None, description="Hash of the fetched bytes to store")
    hash_column: str | None = Field(default=None, description="Column for the hash (default: the algorithm's name)")
    verify_hash_column: str | None = Field(
        default=None,
        description="Column holding the expected hex digest (algorithm from 'hash', default sha256); "
        "a mismatch is rejected as hash_mismatch",
    )

    # -- decode and check --------------------------------------------------------------
    min_size: int = Field(default=0, ge=0, description="Reject images whose shorter side (in pixels) is smaller (too_small)")
    max_pixels: int = Field(
        default=89_478_485, ge=1,
        description="Reject images with more pixels than this before decoding (decompression_bomb)",
    )
    max_side: int | None = Field(default=None, ge=1, description="Reject images whose longer side is bigger (too_large)")
    max_aspect_ratio: float | None = Field(default=None, ge=1.0, description="Reject when longer/shorter side exceeds this (bad_aspect_ratio)")
    exif_transpose: bool = Field(default=True, description="Apply the EXIF orientation (width/height are reported after it)")
    animated: Literal["first-frame", "reject"] = Field(default="first-frame", description="Animated images: keep the first frame (animated=true) or reject")
    background: tuple[int, int, int] = Field(default=(255, 255, 255), description="RGB colour transparent images are composited on and pad borders use")
    fast_jpeg: bool = Field(
        default=True,
        description="Decode RGB/grey JPEGs with simplejpeg (DCT-domain scaling, strict) when installed, and on the OpenCV "
        "path also encode JPEG output with it (4:2:0, like Pillow); Pillow otherwise",
    )

    # -- resize ------------------------------------------------------------------------
    resize: Literal["downscale-shorter", "center-crop", "keep-ratio-largest", "pad", "bucket", "none"] = Field(
        default="downscale-shorter",
        description="downscale-shorter: shorter side to size if larger (never upscale); center-crop: shorter side to size "
        "then a centred size×size crop; keep-ratio-largest: longer side to size; pad: longer side to size then a border "
        "to size×size; bucket: nearest-aspect bucket from 'buckets', covered then centre-cropped; none",
    )
    size: int = Field(default=512, ge=1, description="Target size in pixels (see 'resize')")
    upscale: bool = Field(default=False, description="Allow upscaling for downscale-shorter/keep-ratio-largest (center-crop, pad and bucket always reach their size)")
    resample: Literal["bicubic", "bilinear", "lanczos", "box", "hamming"] = Field(
        default="bicubic",
        description="Resampling filter of the Pillow backend (antialiased); the OpenCV backend downscales with "
        "a box filter (INTER_AREA, or INTER_LINEAR to twice the size then a 2×2 mean when the factor is at most 2; "
        "INTER_LINEAR alone when it is at most 1.25) and upscales with the matching OpenCV filter",
    )
    resize_backend: Literal["auto", "opencv", "pillow"] = Field(
        default="auto",
        description="Pixel work after decoding: 'opencv' (cv2.resize, single-threaded; needs "
        "opencv-python-headless, i.e. mmprep[fast]), 'pillow', or 'auto' (OpenCV when cv2 imports, else Pillow). "
        "Header checks, decoding (simplejpeg/Pillow) and mode conversion are the same either way",
    )
    buckets: str | list[tuple[int, int]] = Field(default="sdxl", description="Bucket sizes [[width, height], ...] or a preset name ('sdxl') for resize: bucket")

    # -- encode ------------------------------------------------------------------------
    format: Literal["jpeg", "webp", "png"] = Field(default="jpeg", description="Output image format")
    quality: int = Field(default=95, ge=1, le=100, description="JPEG/WebP quality")
    png_compress_level: int = Field(default=6, ge=0, le=9, description="PNG zlib level")
    passthrough: bool = Field(
        default=True,
        description="Keep the source bytes when they already are RGB in the target format and nothing was resized or transposed",
    )

    @field_validator("buckets")
    @classmethod
    def _buckets(cls, v):
        if isinstance(v, str):
            if v not in BUCKET_PRESETS:
                raise ValueError(f"unknown bucket preset {v!r} (known: {', '.join(BUCKET_PRESETS)})")
            return v
        if not v:
            raise ValueError("must list at least one [width, height]")
        for w, h in v:
            if w < 1 or h < 1:
                raise ValueError(f"bucket sizes must be positive, got [{w}, {h}]")
        return v

    @model_validator(mode="after")
    def _check(self):
        if self.verify_hash_column and self.hash is None:
            self.hash = "sha256"
        for c in self.extra_image_columns:
            if c in (self.path_column, self.bytes_column) or f"{c}_media" in (self.path_column, self.bytes_column):
                raise ValueError(f"extra_image_columns: {c!r} is the main image's column (path_column/bytes_column)")
        if len(set(self.extra_image_columns)) != len(self.extra_image_columns):
            raise ValueError("extra_image_columns: a column is listed twice")
        return self

    @field_validator("proxy")
    @classmethod
    def _check_proxy(cls, v: str) -> str:
        if v not in ("env", "none"):
            check_proxy_url(v)
        return v

    @field_serializer("proxy")
    def _mask_proxy(self, v: str, info: SerializationInfo):
        ctx = info.context or {}
        return v if ctx.get("secrets") == "keep" else redact(v)

    @field_serializer("storage_options", "headers")
    def _mask(self, v: dict[str, Any], info: SerializationInfo):
        ctx = info.context or {}
        return v if ctx.get("secrets") == "keep" else mask_secrets(v)

    # -- derived -----------------------------------------------------------------------
    def bucket_list(self) -> list[tuple[int, int]]:
        return list(BUCKET_PRESETS[self.buckets]) if isinstance(self.buckets, str) else [tuple(b) for b in self.buckets]

    def hash_col(self) -> str | None:
        return (self.hash_column or self.hash) if self.hash else None
