"""Every setting of the service, read from the environment or a ``.env`` file."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.core.prices import DEFAULT_MODEL_PRICES, ModelPrice, Prices
from services.core.provider_config import DEFAULT_PROVIDER, ProviderConfig, TargetConfig
from services.core.tool_config import (
    IMAGES_SERVER,
    SERVER_NAME_PATTERN,
    McpServerConfig,
    demo_servers,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Configuration. Names are the environment variables; see ``.env.example``."""

    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", frozen=True
    )

    # Server
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    web_concurrency: int = Field(1, ge=1, le=64)  # worker processes (one per core)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = "text"  # json: one JSON object per line
    cors_origins: Annotated[list[str], NoDecode] = []
    max_request_bytes: int = Field(65536, ge=1024)
    http_keepalive_seconds: float = Field(75, gt=0)

    # LLM provider
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    llm_timeout_seconds: float = Field(30.0, gt=0)
    # One immediate retry of a provider on a failed connection or a 5xx; above 1 counts as 1.
    llm_max_retries: int = Field(1, ge=0, le=10)
    llm_connect_timeout_seconds: float = Field(5.0, gt=0)  # opening a connection; then 503
    llm_stream_idle_seconds: float = Field(20.0, gt=0)  # longest silence inside a stream; 504
    llm_retry_after_max_seconds: float = Field(3.0, ge=0)  # longest 429 wait, last target only
    llm_max_connections: int = Field(1000, ge=1)
    llm_providers: list[ProviderConfig] = []  # JSON; named besides "default" (OPENAI_*)
    llm_fallbacks: list[TargetConfig] = []  # JSON; tried after a personality's own fallbacks
    provider_failures_to_cool: int = Field(3, ge=1)  # failures in a row before a cooldown
    provider_cooldown_seconds: float = Field(30, gt=0)  # how long a failing provider is skipped
    # JSON {model: {input, cached_input, output}}, USD per million tokens; over the shipped
    # list prices (services/core/prices.py). A model without a price: cost unknown.
    model_prices: Prices = Field(default_factory=lambda: dict(DEFAULT_MODEL_PRICES))

    # Tools (MCP servers a personality's ``tools`` name)
    mcp_servers: dict[str, McpServerConfig] = Field(
        default_factory=lambda: demo_servers(REPO_ROOT)  # JSON; {}: no tools
    )
    tool_max_rounds: int = Field(4, ge=1, le=20)  # rounds of tool calls in one turn
    tool_timeout_seconds: float = Field(10, gt=0)  # one tool call
    tool_turn_deadline_seconds: float = Field(60, gt=0)  # all of a turn's tool calls
    tool_result_max_chars: int = Field(8000, ge=100)  # longer results are cut for the model
    image_model: str = "gpt-image-1"  # the image tool's model (templates list "images/generate")
    image_size: Literal["256x256", "512x512", "1024x1024", "1024x1536", "1536x1024"] = "1024x1024"
    image_max_bytes: int = Field(2_000_000, ge=1024)  # largest image stored as a data: URL

    # Sampling defaults, used where a template does not set its own
    default_model: str = "gpt-4o-mini"
    default_temperature: float = Field(0.9, ge=0, le=2)
    default_max_tokens: int = Field(50, ge=1)
    default_presence_penalty: float = Field(0.6, ge=-2, le=2)
    default_frequency_penalty: float = Field(0.6, ge=-2, le=2)
    context_messages: int = Field(10, ge=0, le=1000)
    default_template_id: str | None = None
    default_timezone: str = "UTC"  # for {{date}}, {{time}}, {{weekday}} when a client sends none
    session_titles: bool = True  # name each session after its first exchange (one LLM call)
    title_model: str | None = None  # the model naming sessions; None: each session's own
    session_memory: bool = True  # fold old messages into a session's memory (templates opt out)
    summary_model: str | None = None  # the model writing memories; None: each session's own
    memory_max_tokens: int = Field(400, ge=50, le=4000)  # longest memory, in the model's tokens

    # Sessions and turns
    max_message_chars: int = Field(4000, ge=1)
    session_idle_timeout_seconds: float = Field(1800, gt=0)
    eviction_interval_seconds: float = Field(60, gt=0)
    session_expire_after_seconds: float = Field(0, ge=0)
    session_cache_max: int = Field(10000, ge=1)
    session_queue_limit: int = Field(4, ge=0)
    sse_ping_seconds: float = Field(15, gt=0)
    ws_ping_seconds: float = Field(20, gt=0)
    # Largest WebSocket frame, in bytes; larger closes the socket with 1009. The default fits a
    # MAX_MESSAGE_CHARS (4000) message with every character JSON-escaped (12 bytes at most).
    ws_max_frame_bytes: int = Field(65536, ge=1024)

    # Image input (docs/images.md): pictures users attach to their messages
    attachments_per_message: int = Field(4, ge=0, le=16)  # 0: image input off
    attachment_max_bytes: int = Field(10_000_000, ge=1024)  # one image as sent; larger is 413
    attachment_types: Annotated[list[str], NoDecode] = ["png", "jpeg", "webp", "gif"]
    attachment_max_side: int = Field(2048, ge=64, le=8192)  # longer sides are scaled down
    attachment_max_pixels: int = Field(40_000_000, ge=4096)  # decoded size; more: invalid_image
    attachment_history_turns: int = Field(3, ge=1)  # last user turns whose images the model sees
    attachment_dir: Path | None = None  # local store; None: "attachments" beside SQLITE_PATH
    # Models known not to accept images: a message with images to them is 422
    # images_not_supported before any call (matched as a prefix of the model's name).
    models_without_images: Annotated[list[str], NoDecode] = ["gpt-3.5-turbo", "o1-mini", "o3-mini"]

    # Storage
    # firebase when FIREBASE_DATABASE_URL is set; postgres needs DATABASE_URL
    store: Literal["sqlite", "firebase", "postgres"] = "sqlite"
    sqlite_path: Path = REPO_ROOT / "data" / "chatify.db"
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    store_threads: int = Field(4, ge=1, le=64)
    store_timeout_seconds: float = Field(10.0, gt=0)
    templates_seed_dir: Path = REPO_ROOT / "templates_seed"
    template_refresh_seconds: float = Field(30, gt=0)
    stats_flush_seconds: float = Field(10, gt=0)

    # Identity and abuse limits
    auth_mode: Literal["none", "api_key", "firebase"] = "none"
    api_keys: Annotated[list[str], NoDecode] = Field([], repr=False)
    user_api_keys: Annotated[list[str], NoDecode] = Field([], repr=False)
    admin_api_keys: Annotated[list[str], NoDecode] = Field([], repr=False)
    firebase_project_id: str | None = None
    firebase_check_revoked: bool = False
    # Set, firebase-admin accepts unsigned ID tokens with any claims (admin too): local use only.
    firebase_auth_emulator_host: str | None = None
    # true: start with FIREBASE_AUTH_EMULATOR_HOST even on a production database (never do).
    allow_unverified_tokens: bool = False
    rate_limit_turns_per_minute: int = Field(30, ge=1)
    rate_limit_sessions_per_minute: int = Field(10, ge=1)
    max_streams_per_user: int = Field(4, ge=1)
    max_active_sessions_per_user: int = Field(20, ge=1)
    log_message_content: bool = False
    metrics_token: SecretStr | None = None  # a bearer token that may read GET /metrics
    user_daily_token_quota: int = Field(0, ge=0)  # prompt + completion tokens a UTC day; 0: none
    user_daily_cost_limit_micros: int = Field(0, ge=0)  # micro-USD a user a UTC day; 0: none

    # Redis, shared by replicas and workers (optional; without it everything is per process)
    redis_url: str | None = Field(None, repr=False)  # may hold a password
    redis_key_prefix: str = Field("chatify:", max_length=64)
    redis_timeout_seconds: float = Field(0.5, gt=0, le=30)

    # PostgreSQL (STORE=postgres): a libpq URL, postgresql://user:password@host:port/db?sslmode=…
    database_url: SecretStr | None = None
    database_pool_size: int = Field(10, ge=1, le=500)  # connections per process, at most

    # Push notifications through Firebase Cloud Messaging (docs/push.md); off unless enabled
    push_enabled: bool = False
    push_grace_seconds: float = Field(5.0, ge=0, le=300)  # a client back within it: no push
    push_include_text: bool = True  # false: the notification says a reply came, not what
    push_body_chars: int = Field(100, ge=1, le=1000)  # the reply's first characters shown
    push_max_devices_per_user: int = Field(10, ge=1, le=100)  # the oldest beyond are dropped
    push_max_attempts: int = Field(4, ge=1, le=10)  # per device, on FCM's 429/500/503
    push_retry_max_seconds: float = Field(30.0, ge=0)  # longest wait, Retry-After included
    push_queue_limit: int = Field(10_000, ge=1)  # pushes waiting; more are dropped (counted)
    fcm_url: str = "https://fcm.googleapis.com"  # http://127.0.0.1:PORT: a local test server
    fcm_project_id: str | None = None  # None: FIREBASE_PROJECT_ID or the credentials' project

    # Firebase Realtime Database (STORE=firebase)
    firebase_database_url: str | None = None
    firebase_credentials_json: SecretStr | None = None
    google_application_credentials: Path | None = None
    firebase_database_emulator_host: str | None = None
    # The Cloud Storage bucket of image attachments (STORE=firebase); None: "<project>.appspot.com"
    firebase_storage_bucket: str | None = None
    # Scheme included ("http://127.0.0.1:9199"): a local Cloud Storage server (tests, emulator).
    storage_emulator_host: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _firebase_when_url_is_set(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("store") and data.get("firebase_database_url"):
            return {**data, "store": "firebase"}
        return data

    @field_validator(
        "cors_origins",
        "api_keys",
        "user_api_keys",
        "admin_api_keys",
        "attachment_types",
        "models_without_images",
        mode="before",
    )
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator(
        "openai_api_key",
        "openai_base_url",
        "default_template_id",
        "firebase_database_url",
        "firebase_database_emulator_host",
        "firebase_project_id",
        "firebase_auth_emulator_host",
        "metrics_token",
        "redis_url",
        "database_url",
        "firebase_storage_bucket",
        "storage_emulator_host",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("model_prices")
    @classmethod
    def _over_list_prices(cls, prices: dict[str, ModelPrice]) -> dict[str, ModelPrice]:
        return {**DEFAULT_MODEL_PRICES, **prices}

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name") from None
        return value

    @model_validator(mode="after")
    def _check_providers(self) -> Settings:
        names = [p.name for p in self.llm_providers]
        if DEFAULT_PROVIDER in names or len(set(names)) != len(names):
            raise ValueError(f"LLM_PROVIDERS: names must be unique and not {DEFAULT_PROVIDER!r}")
        for config in self.llm_providers:
            config.api_key()  # a named key variable must be set: fail at start, not per turn
        unknown = {t.provider for t in self.llm_fallbacks} - {DEFAULT_PROVIDER, *names}
        if unknown:
            raise ValueError(f"LLM_FALLBACKS names unknown providers: {sorted(unknown)}")
        return self

    @model_validator(mode="after")
    def _check_mcp_servers(self) -> Settings:
        for name, config in self.mcp_servers.items():
            if name == IMAGES_SERVER:
                raise ValueError(
                    f"MCP_SERVERS: {IMAGES_SERVER!r} is the built-in image tool's name"
                )
            if not re.match(SERVER_NAME_PATTERN, name):
                raise ValueError(
                    f"MCP_SERVERS: {name!r} is not a valid name ({SERVER_NAME_PATTERN})"
                )
            config.environment(name)  # named variables must be set: fail at start, not per call
            config.all_headers(name)
        return self

    @property
    def ws_frame_limit(self) -> int:
        """The largest WebSocket frame taken: WS_MAX_FRAME_BYTES, plus room for a message's
        images as base64 when image input is on."""
        images = self.attachments_per_message * (self.attachment_max_bytes * 4 // 3 + 64)
        return self.ws_max_frame_bytes + images

    @property
    def attachments_path(self) -> Path:
        """The local folder of image attachments: the SQLite store's (Firebase keeps them in
        a bucket, PostgreSQL in its database)."""
        return self.attachment_dir or self.sqlite_path.parent / "attachments"

    @property
    def storage_bucket(self) -> str:
        """The Cloud Storage bucket of image attachments on the Firebase store."""
        if self.firebase_storage_bucket:
            return self.firebase_storage_bucket
        url = self.firebase_database_url or ""
        namespace = url.split("ns=")[-1] if "ns=" in url else url.split("//")[-1].split(".")[0]
        return f"{self.firebase_project_id or namespace}.appspot.com"

    @property
    def provider_names(self) -> frozenset[str]:
        """Every configured provider, ``default`` included."""
        return frozenset({DEFAULT_PROVIDER, *(p.name for p in self.llm_providers)})

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must start with redis://, rediss:// or unix://")
        return value

    @model_validator(mode="after")
    def _check_cors(self) -> Settings:
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            raise ValueError("CORS_ORIGINS: '*' cannot be combined with other origins")
        return self

    @model_validator(mode="after")
    def _check_postgres(self) -> Settings:
        if self.store == "postgres" and not self.database_url:
            raise ValueError("STORE=postgres needs DATABASE_URL (postgresql://user:pw@host/db)")
        return self

    @model_validator(mode="after")
    def _check_firebase(self) -> Settings:
        if self.store != "firebase":
            return self
        if not self.firebase_database_url:
            raise ValueError("STORE=firebase needs FIREBASE_DATABASE_URL")
        if not self.firebase_database_url.startswith(("https://", "http://")):
            raise ValueError(
                "FIREBASE_DATABASE_URL must start with https:// (or http:// for an emulator)"
            )
        host = self.firebase_database_emulator_host
        if host is not None and ("//" in host or ":" not in host):
            raise ValueError(
                "FIREBASE_DATABASE_EMULATOR_HOST must be host:port, e.g. 127.0.0.1:9000"
            )
        if self.firebase_uses_emulator:
            return self
        path = self.google_application_credentials
        if self.firebase_credentials_json is None and path is None:
            raise ValueError(
                "STORE=firebase needs credentials: FIREBASE_CREDENTIALS_JSON (the service-account "
                "JSON) or GOOGLE_APPLICATION_CREDENTIALS (its file), unless "
                "FIREBASE_DATABASE_EMULATOR_HOST is set"
            )
        if self.firebase_credentials_json is None and path is not None and not path.is_file():
            raise ValueError(f"GOOGLE_APPLICATION_CREDENTIALS: no file at {path}")
        return self

    @model_validator(mode="after")
    def _check_auth(self) -> Settings:
        if self.auth_mode == "api_key" and not (
            self.api_keys or self.user_api_keys or self.admin_api_keys
        ):
            raise ValueError("AUTH_MODE=api_key needs API_KEYS, USER_API_KEYS or ADMIN_API_KEYS")
        for entry in self.user_api_keys:
            user, sep, key = entry.partition("=")
            if not sep or not key or not re.fullmatch(r"[A-Za-z0-9_.:@-]{1,128}", user):
                raise ValueError(
                    "USER_API_KEYS entries are user_id=key (user_id: A-Z a-z 0-9 _.:@-)"
                )
        metrics = [self.metrics_token.get_secret_value()] if self.metrics_token else []
        for entry in [*self.api_keys, *self.admin_api_keys, *self.user_api_keys, *metrics]:
            key = entry.partition("=")[2] if entry in self.user_api_keys else entry
            if key.startswith("sha256:") and not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", key):
                raise ValueError("API keys given as sha256: need 64 hex digits after the prefix")
        if (
            self.auth_mode == "firebase"
            and self.firebase_check_revoked
            and not self.firebase_auth_emulator_host
            and self.firebase_credentials_json is None
            and self.google_application_credentials is None
        ):
            raise ValueError(
                "FIREBASE_CHECK_REVOKED=true asks Firebase Auth about each token, which needs "
                "FIREBASE_CREDENTIALS_JSON or GOOGLE_APPLICATION_CREDENTIALS"
            )
        if (
            self.tokens_unverified
            and self._production_database
            and not self.allow_unverified_tokens
        ):
            raise ValueError(
                "FIREBASE_AUTH_EMULATOR_HOST turns off ID token verification (any unsigned token "
                "is accepted, admin claims included) but FIREBASE_DATABASE_URL is a production "
                "database; unset it, or set ALLOW_UNVERIFIED_TOKENS=true if you really mean it"
            )
        if self.auth_mode == "firebase" and not self.firebase_auth_project_id:
            raise ValueError(
                "AUTH_MODE=firebase needs FIREBASE_PROJECT_ID "
                "(or Firebase credentials that name the project)"
            )
        return self

    @model_validator(mode="after")
    def _check_push(self) -> Settings:
        if not self.push_enabled:
            return self
        if not self.fcm_url.startswith(("https://", "http://")):
            raise ValueError("FCM_URL must start with https:// (or http:// for a test server)")
        if not (self.fcm_project_id or self.firebase_auth_project_id):
            raise ValueError(
                "PUSH_ENABLED=true needs FCM_PROJECT_ID (or FIREBASE_PROJECT_ID, or Firebase "
                "credentials that name the project)"
            )
        if self.fcm_uses_credentials and not (
            self.firebase_credentials_json is not None or self.google_application_credentials
        ):
            raise ValueError(
                "PUSH_ENABLED=true sends through FCM, which needs FIREBASE_CREDENTIALS_JSON or "
                "GOOGLE_APPLICATION_CREDENTIALS (a service account allowed to send messages)"
            )
        return self

    @property
    def fcm_uses_credentials(self) -> bool:
        """Whether FCM requests are signed (not for a plain-HTTP test server)."""
        return self.fcm_url.startswith("https://")

    @property
    def firebase_auth_project_id(self) -> str | None:
        """The project whose ID tokens are accepted."""
        if self.firebase_project_id:
            return self.firebase_project_id
        raw = None
        if self.firebase_credentials_json is not None:
            raw = self.firebase_credentials_json.get_secret_value()
        elif self.google_application_credentials and self.google_application_credentials.is_file():
            raw = self.google_application_credentials.read_text(encoding="utf-8")
        try:
            project = json.loads(raw).get("project_id") if raw else None
        except (ValueError, AttributeError):
            return None
        return project if isinstance(project, str) and project else None

    @property
    def tokens_unverified(self) -> bool:
        """Whether ID tokens are accepted without verification (the Auth emulator's way)."""
        return self.auth_mode == "firebase" and bool(self.firebase_auth_emulator_host)

    @property
    def _production_database(self) -> bool:
        """Whether FIREBASE_DATABASE_URL is a real database, not an emulator or loopback one."""
        if not self.firebase_database_url or self.firebase_database_emulator_host:
            return False
        host = urlsplit(self.firebase_database_url).hostname or ""
        return host not in ("127.0.0.1", "localhost", "::1")

    @property
    def firebase_uses_emulator(self) -> bool:
        """Whether firebase-admin talks to an emulator (no credentials needed)."""
        url = self.firebase_database_url or ""
        return bool(self.firebase_database_emulator_host) or url.startswith("http://")

    @property
    def llm_provider(self) -> Literal["openai", "openai-compatible", "offline"]:
        """Which kind of model the service talks to."""
        if self.openai_base_url:
            return "openai-compatible"
        return "openai" if self.openai_api_key else "offline"
