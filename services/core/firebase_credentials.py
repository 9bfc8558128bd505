"""The Firebase service-account credential, read from the settings: what the Realtime Database
store and Firebase Auth (``services.identity``) both sign in with."""

from __future__ import annotations

import json

from firebase_admin import credentials

from services.core.settings import Settings


def firebase_credential(settings: Settings) -> credentials.Base:
    """The service-account credential from the settings; ``ValueError`` naming the variable."""
    try:
        if settings.firebase_credentials_json is not None:
            info = json.loads(settings.firebase_credentials_json.get_secret_value())
            return credentials.Certificate(info)
        return credentials.Certificate(str(settings.google_application_credentials))
    except (ValueError, OSError) as exc:
        which = (
            "FIREBASE_CREDENTIALS_JSON"
            if settings.firebase_credentials_json is not None
            else "GOOGLE_APPLICATION_CREDENTIALS"
        )
        raise ValueError(
            f"{which} is not a valid service-account key: {type(exc).__name__}"
        ) from None
