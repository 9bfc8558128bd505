"""``FirebaseStore``: every role of the Firebase store on one firebase-admin app."""

from __future__ import annotations

from services.core.settings import Settings
from services.store.firebase.branches import FirebaseBranches
from services.store.firebase.devices import FirebaseDevices
from services.store.firebase.documents import FirebaseDocuments
from services.store.firebase.memory import FirebaseMemory
from services.store.firebase.sessions import FirebaseSessions
from services.store.firebase.turns import FirebaseTurns
from services.store.firebase.usage import FirebaseUsage
from services.store.firebase.user_data import FirebaseUserData


class FirebaseStore(
    FirebaseSessions,
    FirebaseTurns,
    FirebaseBranches,
    FirebaseMemory,
    FirebaseDocuments,
    FirebaseUsage,
    FirebaseUserData,
    FirebaseDevices,
):
    """``Store`` on a Firebase Realtime Database."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._init_turns(settings.session_cache_max)
        self._init_memory(settings.session_cache_max)
        self._init_documents()
