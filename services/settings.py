"""Every setting of the service, read from the environment or a ``.env`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Configuration. Names are the environment variables; see ``.env.example``."""

    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", frozen=True
    )

    # Server
    host: str = "0.0.0.0"
    port: int = Field(8000, ge=1, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    cors_origins: Annotated[list[str], NoDecode] = []
    max_request_bytes: int = Field(65536, ge=1024)

    # LLM provider
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    llm_timeout_seconds: float = Field(30.0, gt=0)
    llm_max_retries: int = Field(2, ge=0, le=10)

    # Sampling defaults, used where a template does not set its own
    default_model: str = "gpt-4o-mini"
    default_temperature: float = Field(0.9, ge=0, le=2)
    default_max_tokens: int = Field(50, ge=1)
    default_presence_penalty: float = Field(0.6, ge=-2, le=2)
    default_frequency_penalty: float = Field(0.6, ge=-2, le=2)
    context_messages: int = Field(10, ge=0, le=1000)
    default_template_id: str | None = None

    # Sessions and turns
    max_message_chars: int = Field(4000, ge=1)
    session_idle_timeout_seconds: float = Field(1800, gt=0)
    eviction_interval_seconds: float = Field(60, gt=0)
    session_expire_after_seconds: float = Field(0, ge=0)
    session_cache_max: int = Field(10000, ge=1)
    session_queue_limit: int = Field(4, ge=0)
    sse_ping_seconds: float = Field(15, gt=0)
    ws_ping_seconds: float = Field(20, gt=0)

    # Storage
    store: Literal["sqlite", "firebase"] = "sqlite"  # firebase when FIREBASE_DATABASE_URL is set
    sqlite_path: Path = REPO_ROOT / "data" / "chatify.db"
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "FULL"
    store_threads: int = Field(4, ge=1, le=64)
    store_timeout_seconds: float = Field(10.0, gt=0)
    templates_seed_dir: Path = REPO_ROOT / "templates_seed"
    template_refresh_seconds: float = Field(30, gt=0)

    # Firebase Realtime Database (STORE=firebase)
    firebase_database_url: str | None = None
    firebase_credentials_json: SecretStr | None = None
    google_application_credentials: Path | None = None
    firebase_database_emulator_host: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _firebase_when_url_is_set(cls, data: object) -> object:
        if isinstance(data, dict) and not data.get("store") and data.get("firebase_database_url"):
            return {**data, "store": "firebase"}
        return data

    @field_validator("cors_origins", mode="before")
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
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check_cors(self) -> Settings:
        if "*" in self.cors_origins and len(self.cors_origins) > 1:
            raise ValueError("CORS_ORIGINS: '*' cannot be combined with other origins")
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
