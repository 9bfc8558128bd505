-- Push notifications (docs/push.md): a user's devices (FCM registration tokens) and opt-outs.
-- A token is the primary key: one user holds it at a time (registering it moves it).

CREATE TABLE push_devices (
    token TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    platform TEXT NOT NULL,
    app_version TEXT,
    registered_at TEXT NOT NULL
);
CREATE INDEX push_devices_by_user ON push_devices (user_id, registered_at);

CREATE TABLE push_preferences (
    user_id TEXT PRIMARY KEY,
    enabled BOOLEAN NOT NULL DEFAULT TRUE,
    muted_sessions JSONB NOT NULL DEFAULT '[]'
);
