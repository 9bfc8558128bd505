"""The image tool: a personality that lists ``images/generate`` may have the model create
images through its provider's OpenAI-compatible ``/images/generations`` endpoint.

The model gets a short text result (never the image itself, which would fill its context);
the image's reference, a URL or a ``data:`` URL, goes with the tool's result and on the reply
(``images``), where clients show it. The offline responder and the mock LLM answer with a
small image (``services.llm.placeholder``), so everything works without a provider.
"""

from __future__ import annotations

import logging
from typing import Any

from services.core.errors import ChatifyError
from services.core.records import Sampling
from services.core.tool_config import IMAGES_SERVER
from services.llm.client import LLMClient
from services.llm.tools.mcp import ToolOutcome, ToolSpec

logger = logging.getLogger(__name__)
SIZES = ("256x256", "512x512", "1024x1024", "1024x1536", "1536x1024")
SPEC = ToolSpec(
    IMAGES_SERVER,
    "generate",
    "Create an image from a detailed description; it is shown to the user with your reply.",
    {
        "type": "object",
        "properties": {
            "prompt": {"type": "string", "minLength": 1, "maxLength": 1000},
            "size": {"type": "string", "enum": list(SIZES)},
        },
        "required": ["prompt"],
        "additionalProperties": False,
    },
)


class ImageTool:
    """Runs ``images/generate`` calls on the session's provider."""

    def __init__(self, llm: LLMClient, *, model: str, size: str, max_bytes: int) -> None:
        self._llm = llm
        self._model = model
        self._size = size
        self._max_bytes = max_bytes

    async def call(self, arguments: dict[str, Any], sampling: Sampling) -> ToolOutcome:
        """One image; a provider's refusal or failure is an error result for the model."""
        size = str(arguments.get("size") or self._size)
        try:
            image = await self._llm.generate_image(
                str(arguments["prompt"]), sampling, model=self._model, size=size
            )
        except ChatifyError as error:
            logger.warning("image generation failed: %s", error.code)
            return ToolOutcome(f"The image could not be created ({error.message})", True)
        if image.url is None and len(image.b64 or "") * 3 // 4 > self._max_bytes:
            return ToolOutcome(
                f"The image is larger than IMAGE_MAX_BYTES ({self._max_bytes} bytes)", True
            )
        return ToolOutcome(
            "The image was created and is shown to the user with your reply.",
            images=(image.reference(),),
        )
