"""The production store: Firebase Realtime Database through firebase-admin.

Layout (docs/data.md), with the small helper nodes the service owns:

    /templates/{id}, /settings/universalRules          edited by authors in the console
    /userSessions/{sid}                                metadata fields, then
        conversation_history/m{seq:010d}               one message per key, ordered as strings
        next_seq: {"next": n, "by": token, "ids", "since"}   compare-and-set node for seqs and
                  {"closed": "ended" | "expired"}      recent ids (seq_node.py); once over
        conversation_client_ids/{client_message_id}: seq   idempotency pointer
        memory: {"text", "seq", "at"}                  the rolling memory (memory.py)
        conversation_branches/m{seq}/v{n}              variants of a seq (branches.py)
    /userSessionIndex/{user}/{sid}                     summary, for a user's session list
    /sessionActivity/{sid}: last_activity              active sessions only, for expiry

A turn is one multi-path update of constant size. Sequence numbers and the turn's
``client_message_id`` are claimed by one conditional write on ``next_seq`` (whose ETag is
cached, so one request in the steady state), never by a transaction on the session node, which
would read and rewrite the whole history. The turn side lives in ``turns.py``.

One file per role of ``services.store.base``, each a mixin on ``FirebaseConnection``
(connection.py): sessions.py, turns.py, branches.py, memory.py, documents.py, usage.py,
user_data.py; ``FirebaseStore`` (store.py) combines them. Beside them: rtdb_keys.py (escaping keys),
seq_node.py (the seq claim's node), usage_nodes.py (the usage counters' layout).
"""

from services.store.firebase.store import FirebaseStore

__all__ = ["FirebaseStore"]
