"""How model providers are configured: ``LLM_PROVIDERS`` and ``LLM_FALLBACKS`` items, and a
personality's ``fallbacks`` (routing itself is ``services/llm/providers.py``)."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from services.core.prices import Prices

DEFAULT_PROVIDER = "default"  # the OPENAI_* settings
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,31}$"
Target = tuple[str, str]  # (provider, model)


class ProviderConfig(BaseModel):
    """One named OpenAI-compatible endpoint (an item of ``LLM_PROVIDERS``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    base_url: str = Field(min_length=1)
    api_key_env: str | None = Field(
        None, description="The environment variable holding its key (none: a keyless server)"
    )
    headers: dict[str, str] = Field({}, description="Sent with every request (e.g. OpenRouter's)")
    timeout_seconds: float = Field(30.0, gt=0)
    prices: Prices = Field(
        {}, description="Its own prices by model, before MODEL_PRICES (docs/usage.md)"
    )

    def api_key(self) -> str | None:
        """The key, read from its environment variable; a named variable must be set."""
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise ValueError(
                f"LLM_PROVIDERS: provider {self.name!r} takes its key from "
                f"{self.api_key_env}, which is not set"
            )
        return key


class TargetConfig(BaseModel):
    """A provider and a model (an item of ``LLM_FALLBACKS`` or a template's ``fallbacks``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    provider: str = Field(pattern=NAME_PATTERN)
    model: str = Field(min_length=1, max_length=100, pattern=r"^\S+$")

    def target(self) -> Target:
        """As a tuple."""
        return (self.provider, self.model)


def target_key(target: Target) -> str:
    """A provider and model as one name, ``provider/model`` (the key of a ``by_model``
    breakdown). A provider's name holds no ``/``, so the first one splits it again."""
    return f"{target[0]}/{target[1]}"


def target_of_key(key: str) -> Target:
    """Inverse of ``target_key``."""
    provider, _, model = key.partition("/")
    return (provider, model)
