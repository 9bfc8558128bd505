-- The first schema: the same tables, columns and meanings as the SQLite store's (docs/data.md),
-- with the database enforcing what the service relies on: one row per (session, seq), one user
-- message per (session, client_message_id), and no message, variant or share left behind by an
-- erased session (ON DELETE CASCADE). Timestamps stay the service's ISO 8601 UTC strings
-- (YYYY-MM-DDTHH:MM:SS.mmmZ), which sort as they read and come back exactly as written.

CREATE TABLE sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    template_id TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_activity TEXT NOT NULL,
    ended_at TEXT,
    message_count INTEGER NOT NULL DEFAULT 0,
    system_prompt TEXT NOT NULL,
    model TEXT NOT NULL,
    temperature DOUBLE PRECISION NOT NULL,
    max_tokens INTEGER NOT NULL,
    presence_penalty DOUBLE PRECISION NOT NULL,
    frequency_penalty DOUBLE PRECISION NOT NULL,
    context_messages INTEGER NOT NULL,
    title TEXT,
    summary TEXT,
    template_version INTEGER,
    preview TEXT,
    welcome_message TEXT,
    context_tokens INTEGER,
    memory_mode TEXT,
    summary_seq INTEGER NOT NULL DEFAULT 0,
    provider TEXT,
    fallbacks TEXT,
    tools TEXT,
    usage_prompt_tokens BIGINT NOT NULL DEFAULT 0,
    usage_completion_tokens BIGINT NOT NULL DEFAULT 0,
    usage_turns BIGINT NOT NULL DEFAULT 0,
    usage_calls BIGINT NOT NULL DEFAULT 0,
    usage_cost_micros BIGINT NOT NULL DEFAULT 0,
    usage_calls_cost_micros BIGINT NOT NULL DEFAULT 0,
    usage_priced BIGINT NOT NULL DEFAULT 0
);
-- A user's sessions by activity, and the cursor below a (last_activity, session_id) pair.
CREATE INDEX sessions_by_user_activity ON sessions (user_id, last_activity, session_id);
-- Expiry reads the active sessions idle the longest.
CREATE INDEX sessions_active_by_activity ON sessions (last_activity) WHERE status = 'active';

CREATE TABLE messages (
    session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    timestamp TEXT NOT NULL,
    client_message_id TEXT,
    usage JSONB,
    provider TEXT,
    model TEXT,
    tools JSONB,
    finish_reason TEXT,
    PRIMARY KEY (session_id, seq)
);
-- Exactly once per client_message_id, across replicas: a second write of one fails here.
CREATE UNIQUE INDEX messages_by_client_id ON messages (session_id, client_message_id)
    WHERE client_message_id IS NOT NULL AND role = 'user';

CREATE TABLE message_variants (
    session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    variant INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    messages JSONB NOT NULL,
    PRIMARY KEY (session_id, seq, variant)
);

-- Documents keep the author's text as written (JSON, not JSONB, which reorders keys).
CREATE TABLE templates (template_id TEXT PRIMARY KEY, document JSON NOT NULL);
CREATE TABLE settings (key TEXT PRIMARY KEY, document JSON NOT NULL);
CREATE TABLE document_versions (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    number INTEGER NOT NULL,
    entry JSON NOT NULL,
    PRIMARY KEY (kind, key, number)
);

CREATE TABLE template_stats (
    template_id TEXT PRIMARY KEY,
    sessions BIGINT NOT NULL DEFAULT 0,
    turns BIGINT NOT NULL DEFAULT 0,
    reply_tokens BIGINT NOT NULL DEFAULT 0,
    failed_turns BIGINT NOT NULL DEFAULT 0,
    last_used TEXT,
    cost_micros BIGINT NOT NULL DEFAULT 0
);
CREATE TABLE template_stats_by_model (
    template_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    turns BIGINT NOT NULL DEFAULT 0,
    reply_tokens BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (template_id, provider, model)
);

CREATE TABLE usage_daily (
    user_id TEXT NOT NULL,
    day TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    turns BIGINT NOT NULL DEFAULT 0,
    calls BIGINT NOT NULL DEFAULT 0,
    cost_micros BIGINT NOT NULL DEFAULT 0,
    calls_cost_micros BIGINT NOT NULL DEFAULT 0,
    priced BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day)
);
CREATE TABLE session_usage_by_model (
    session_id TEXT NOT NULL REFERENCES sessions ON DELETE CASCADE,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    turns BIGINT NOT NULL DEFAULT 0,
    calls BIGINT NOT NULL DEFAULT 0,
    cost_micros BIGINT NOT NULL DEFAULT 0,
    calls_cost_micros BIGINT NOT NULL DEFAULT 0,
    priced BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (session_id, provider, model)
);
CREATE TABLE usage_daily_by_model (
    user_id TEXT NOT NULL,
    day TEXT NOT NULL,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    prompt_tokens BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    turns BIGINT NOT NULL DEFAULT 0,
    calls BIGINT NOT NULL DEFAULT 0,
    cost_micros BIGINT NOT NULL DEFAULT 0,
    calls_cost_micros BIGINT NOT NULL DEFAULT 0,
    priced BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, day, provider, model)
);
