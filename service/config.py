"""The one settings object: every tunable of the service, read from ``HDR_*`` variables.

Nothing reads the environment at import time: callers build ``Settings()`` when they start
(in the CLI, the API's lifespan, the worker's start-up) and pass it down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from typing_extensions import Self

#: Tile geometry chosen from the tiled-vs-full and throughput measurements in README.md.
DEFAULT_TILE_SIZE = 256
DEFAULT_TILE_OVERLAP = 32
DEFAULT_TILE_BATCH = 2


class Settings(BaseSettings):
    """Service configuration; see the configuration table in README.md."""

    model_config = SettingsConfigDict(env_prefix="HDR_", extra="ignore")

    # --- model and inference -------------------------------------------------------------
    model_repo: Path = Field(Path("model_repo"), description="Model repository root.")
    default_model: str = Field("afunet", description="Model served when a job names none.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Inference device; auto picks CUDA when available."
    )
    engine: str | None = Field(
        None, description="Force a backend (torch, onnxruntime, tensorrt); else config.yaml."
    )
    tile_size: int = Field(DEFAULT_TILE_SIZE, ge=16, description="Tile edge in pixels (x8).")
    tile_overlap: int = Field(DEFAULT_TILE_OVERLAP, ge=0, description="Tile overlap in pixels.")
    tile_batch: int = Field(DEFAULT_TILE_BATCH, ge=1, description="Tiles per engine call.")

    # --- Redis and the job queue ---------------------------------------------------------
    redis_url: str | None = Field(
        None, description="Redis DSN; unset means `serve` starts an embedded Redis."
    )
    key_prefix: str = Field("hdr", description="Prefix of every Redis key of the service.")
    job_ttl_seconds: int = Field(
        24 * 3600, ge=1, description="Lifetime of job records, uploads and results."
    )
    visibility_timeout_seconds: float = Field(
        300.0, gt=0, description="A job unacknowledged this long is re-delivered."
    )
    max_attempts: int = Field(3, ge=1, description="Deliveries before a job is dead-lettered.")
    max_queue_length: int = Field(100, ge=1, description="Queued jobs beyond which POST is 429.")

    # --- API limits and auth -------------------------------------------------------------
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated API keys; empty disables auth."
    )
    max_upload_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="Largest accepted file per exposure, in bytes."
    )
    max_pixels: int = Field(24_000_000, ge=1, description="Largest accepted frame, width x height.")
    min_side: int = Field(16, ge=1, description="Smallest accepted width or height.")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _check_tiles(self) -> Self:
        if self.tile_size % 8:
            raise ValueError(f"tile_size must be a multiple of 8, got {self.tile_size}")
        if 2 * self.tile_overlap >= self.tile_size:
            raise ValueError(
                f"tile_overlap ({self.tile_overlap}) must be less than half the tile size"
                f" ({self.tile_size})"
            )
        return self
