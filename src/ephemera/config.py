"""Settings: defaults, then a TOML file (``EPHEMERA_CONFIG``), then ``EPHEMERA_*`` variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from ephemera.models import MAX_TIMEOUT_S

GiB = 1024**3


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EPHEMERA_", extra="forbid")

    data_dir: Path = Field(Path("./ephemera-data"), description="Where the embedded default lives")
    database_url: str | None = Field(
        None, description="Metadata database; default SQLite in data_dir"
    )
    blob_url: str | None = Field(None, description="Blob store; default a directory in data_dir")
    idle_timeout_s: int | None = Field(3600, ge=1, description="Default idle timeout of a session")
    max_age_s: int | None = Field(
        None,
        ge=1,
        le=MAX_TIMEOUT_S,
        description="Default maximum age of a session, and the longest one a caller without an "
        "admin key may ask for",
    )
    max_idle_timeout_s: int = Field(
        7 * 86400,
        ge=1,
        le=MAX_TIMEOUT_S,
        description="Longest idle timeout a caller without an admin key may ask for (never "
        "expiring takes an admin key)",
    )
    temporary_ttl_s: int = Field(24 * 3600, ge=1, description="Life of a temporary artifact")
    result_retention_days: float = Field(30, gt=0, description="How long task outputs are kept")
    orphan_grace_s: int = Field(3600, ge=0, description="Age before unreferenced bytes are removed")
    cleanup_interval_s: int = Field(900, ge=1, description="Scheduled cleanup interval")
    orphan_interval_s: int = Field(
        3600,
        ge=0,
        description="Scheduled cleanup starts a new lap of orphan reconciliation (stored bytes "
        "against records, session by session) at the first tick this long after the last lap "
        "ended; a lap goes on at every tick, one slice at a time (explicit `cleanup orphaned` "
        "and `cleanup all` always walk the whole store)",
    )
    orphan_slice_artifacts: int = Field(
        5000,
        ge=1,
        description="Artifacts one scheduled tick compares with the stored bytes (a session "
        "counts its records or its stored names, whichever are more; a tick takes whole "
        "sessions, at least one): bounds the tick's cost however large the store is",
    )
    orphan_slice_sessions: int = Field(
        1000,
        ge=1,
        description="Sessions one scheduled tick reconciles with the stored bytes at most "
        "(whichever of this and `orphan_slice_artifacts` comes first ends the tick's slice)",
    )
    scheduled_cleanup: bool = Field(True, description="Run cleanup inside `ephemera serve`")
    max_upload_bytes: int = Field(GiB, ge=1, description="Largest accepted artifact")
    max_json_upload_bytes: int = Field(
        64 * 1024**2, ge=1, description="Largest JSON/base64 upload body (held in memory)"
    )
    session_quota_bytes: int | None = Field(None, ge=1, description="Bytes one session may hold")
    quota_high_water_bytes: int | None = Field(
        None, ge=1, description="Above this many stored bytes, evict idle sessions"
    )
    quota_low_water_bytes: int | None = Field(
        None, ge=0, description="Evict until stored bytes are back under this"
    )
    lease_default_ttl_s: int = Field(300, ge=1, description="Lease duration when none is asked")
    lease_max_ttl_s: int = Field(24 * 3600, ge=1, description="Longest lease one request may take")
    webhook_url: str | None = Field(None, description="POSTed on session close, artifact delete")
    cleanup_requests_per_minute: int = Field(
        30, ge=1, description="Admin cleanup requests allowed per key and minute"
    )
    workers: int = Field(
        2, ge=0, description="Tasks `ephemera serve` runs at once (0: none; see worker_mode)"
    )
    worker_mode: Literal["auto", "processes", "threads"] = Field(
        "auto",
        description="How `ephemera serve` runs its workers: `processes` (each an `ephemera "
        "worker` child, supervised), `threads` (beside the API, sharing its interpreter), or "
        "`auto`: processes when the machine has more than one core (threads in an app's own "
        "lifespan)",
    )
    task_claim_ttl_s: float = Field(
        30, gt=0, description="A worker that has not renewed its claim this long is lost"
    )
    task_max_attempts: int = Field(3, ge=1, description="Attempts before a lost task fails")
    task_retry_delay_s: float = Field(
        1, ge=0, description="Delay before a lost task is retried (doubles each attempt)"
    )
    external_processors: list[str] = Field(
        default_factory=list,
        description="Processor names run by external workers; their params are not checked here",
    )
    activity_write_interval_s: float = Field(
        5, ge=0, description="Activity is written at most this often per session"
    )
    # -- live events and wake-ups -------------------------------------------------------------
    event_retention_s: int = Field(
        3600, ge=1, description="How long session events are kept for streams that reconnect"
    )
    event_poll_s: float = Field(
        1.5,
        gt=0,
        description="Event streams read again at least this often (wake-ups come sooner)",
    )
    event_ping_s: float = Field(
        15, gt=0, description="Keep-alive comment sent on an idle event stream this often"
    )
    event_streams_max: int = Field(
        500, ge=1, description="Event streams one process serves at once (429 beyond)"
    )
    event_streams_per_session: int = Field(
        10, ge=1, description="Event streams of one session one process serves at once (429 beyond)"
    )
    event_send_timeout_s: float = Field(
        30, gt=0, description="An event stream whose client accepts no write for this long ends"
    )
    worker_poll_s: float = Field(
        0.5,
        gt=0,
        description="Idle workers look for tasks at least this often (submissions wake them)",
    )
    # -- serving ------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface `ephemera serve` listens on")
    port: int = Field(8000, ge=0, le=65535, description="TCP port `ephemera serve` listens on")
    processors: list[str] | None = Field(
        None,
        description="Processors tasks may use (JSON list); default: the built-ins. Processors "
        "of entry points run only when named here",
    )
    # -- credentials --------------------------------------------------------------------------
    anonymous_sessions: bool = Field(
        False, description="Let requests without credentials create sessions (closed networks)"
    )
    anonymous_sessions_per_minute: int = Field(
        10, ge=1, description="Anonymous session creations allowed per client address and minute"
    )
    auth_failures_per_minute: int = Field(
        30, ge=1, description="Failed authentications allowed per client address and minute"
    )
    console: bool = Field(True, description="Serve the web console at /console")
    console_login_ttl_s: int = Field(
        8 * 3600,
        ge=60,
        le=30 * 86400,
        description="How long a web console sign-in lasts (signing out or revoking ends it)",
    )
    usage_retention_s: int = Field(
        30 * 86400,
        ge=3600,
        description="How long the usage samples drawn by the console's overview are kept",
    )
    metrics_public: bool = Field(
        False, description="Serve /metrics without an admin key (on a private scrape network)"
    )
    # -- download links -----------------------------------------------------------------------
    link_max_ttl_s: int = Field(
        7 * 86400, ge=1, le=MAX_TIMEOUT_S, description="Longest life of a signed download link"
    )
    link_refusals_per_minute: int = Field(
        30,
        ge=1,
        description="Refused download links that may be guesses (changed, unknown key; not "
        "expired) allowed per client address and minute; beyond, its links answer 429",
    )
    link_redirect: bool = Field(
        False,
        description="On S3, answer an attachment download link with a redirect to a presigned "
        "URL of the bucket instead of streaming the bytes through the server",
    )
    accel_redirect_prefix: str | None = Field(
        None,
        pattern=r"^(/[A-Za-z0-9._~-]+)+$",
        description="Behind nginx: downloads of local files are answered with X-Accel-Redirect "
        "to this internal location (which aliases the blob directory), for requests the proxy "
        "marks with `X-Sendfile-Type: X-Accel-Redirect`; nginx sends the bytes without hashing "
        "them (see the operations guide). Default off",
    )
    s3_public_endpoint: str | None = Field(
        None,
        pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$",
        description="The S3 endpoint as clients reach it, for presigned URLs (default: the "
        "blob URL's endpoint)",
    )
    # -- integrity ----------------------------------------------------------------------------
    scrub_period_s: int = Field(
        7 * 86400,
        ge=0,
        description="The scheduled scrub re-hashes every artifact within this period (0: off)",
    )
    scrub_rate_mb_s: float = Field(
        20, gt=0, description="Most MB/s the scheduled scrub reads (it resumes where it stopped)"
    )
    # -- the local volume ---------------------------------------------------------------------
    file_mode: str = Field(
        "0600", pattern=r"^0?[0-7]{3}$", description="Mode of data files (octal)"
    )
    dir_mode: str = Field("0700", pattern=r"^0?[0-7]{3}$", description="Mode of data folders")
    low_space_bytes: int = Field(
        256 * 1024**2,
        ge=0,
        description="Below this much free space: /readyz reports it, the scheduler cleans up",
    )
    reserve_bytes: int = Field(
        16 * 1024**2,
        ge=0,
        description="Space held in reserve in the data dir, released so cleanup can run on a "
        "full volume; uploads are refused when less than this is free",
    )
    create_bucket: bool = Field(False, description="Create the S3 bucket at start-up if missing")
    # -- uploads ------------------------------------------------------------------------------
    upload_idle_timeout_s: float = Field(
        60, gt=0, description="An upload or JSON request body that stalls this long answers 408"
    )
    idempotency_ttl_s: int = Field(
        24 * 3600,
        ge=1,
        le=MAX_TIMEOUT_S,
        description="How long an Idempotency-Key's answer is kept for retries",
    )
    max_concurrent_uploads: int = Field(
        8,
        ge=1,
        description="Uploads one session may have in flight at once, per process (429 above)",
    )

    # -- resumable uploads (tus) -----------------------------------------------------------------
    tus_upload_ttl_s: int = Field(
        24 * 3600,
        ge=1,
        le=MAX_TIMEOUT_S,
        description="Life of a resumable upload from its creation (Upload-Expires)",
    )
    tus_claim_timeout_s: float = Field(
        5,
        gt=0,
        description="A resumable upload's writer that has sent nothing this long loses it to "
        "the next request",
    )
    tus_cors_origins: list[str] = Field(
        default_factory=list,
        description='Origins browsers may send resumable uploads from (JSON list; "*" for '
        "any); default none",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("EPHEMERA_CONFIG")
        if config_file:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=Path(config_file)))
        return tuple(sources)

    @property
    def file_mode_bits(self) -> int:
        return int(self.file_mode, 8)

    @property
    def dir_mode_bits(self) -> int:
        return int(self.dir_mode, 8)

    def resolved_database_url(self) -> str:
        url = self.database_url or f"sqlite:///{self.data_dir.resolve() / 'ephemera.db'}"
        # A plain PostgreSQL URL (as libpq and most tools write it) means psycopg 3.
        for scheme in ("postgres://", "postgresql://"):
            if url.startswith(scheme):
                return "postgresql+psycopg://" + url.removeprefix(scheme)
        return url

    def resolved_blob_url(self) -> str:
        return self.blob_url or f"file://{self.data_dir.resolve() / 'blobs'}"
