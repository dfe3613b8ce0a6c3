-- Whether a server lets members steer by pictures (uploads, like:, /blend): uploads are user content, which a
-- server may not want. On unless its moderators turn it off (/settings images).
ALTER TABLE guild_settings ADD COLUMN image_prompts INTEGER NOT NULL DEFAULT 1;
