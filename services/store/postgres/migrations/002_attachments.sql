-- Image input (docs/images.md): a user message keeps the references of its images (id, type,
-- size, dimensions) as a JSONB array; a variant's messages (JSONB already) carry the same field.
-- The images' bytes live in their own table, by user, so that every replica on this database
-- reads what another wrote; erasing a user deletes their rows (there is no session to cascade
-- from: an upload may precede the message that references it).

ALTER TABLE messages ADD COLUMN attachments JSONB;

CREATE TABLE attachments (
    user_id TEXT NOT NULL,
    attachment_id TEXT NOT NULL,
    reference JSONB NOT NULL,
    data BYTEA NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, attachment_id)
);
-- PNG, JPEG, WebP and GIF bytes are compressed already: stored out of line, not compressed again.
ALTER TABLE attachments ALTER COLUMN data SET STORAGE EXTERNAL;
