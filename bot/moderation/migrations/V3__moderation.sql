-- Moderation (bot.moderation): per-server settings and quota rules (NULL: the bot's default, or no limit),
-- overrides for members and roles, allowed channels, banned words, blocked members, and the audit trail of
-- every moderator action with its before and after as JSON.

CREATE TABLE guild_settings (
    guild_id                   INTEGER PRIMARY KEY,
    default_steps              INTEGER,
    max_steps                  INTEGER,
    default_size               INTEGER,
    max_size                   INTEGER,
    spoiler_by_default         INTEGER NOT NULL DEFAULT 0,
    paused                     INTEGER NOT NULL DEFAULT 0,
    log_channel_id             INTEGER,
    quota_per_day              INTEGER,
    quota_per_hour             INTEGER,
    quota_max_queued           INTEGER,
    quota_max_running          INTEGER,
    budget_jobs_per_day        INTEGER,
    budget_gpu_minutes_per_day REAL
);

CREATE TABLE quota_overrides (
    guild_id    INTEGER NOT NULL,
    target_kind TEXT NOT NULL CHECK (target_kind IN ('member', 'role')),
    target_id   INTEGER NOT NULL,
    exempt      INTEGER NOT NULL DEFAULT 0,
    -- Only the limits the override sets: {"per_day": 40, "max_queued": null (no limit)}.
    limits_json TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (guild_id, target_kind, target_id)
);

CREATE TABLE allowed_channels (
    guild_id   INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    PRIMARY KEY (guild_id, channel_id)
);

CREATE TABLE banned_words (
    guild_id INTEGER NOT NULL,
    word     TEXT NOT NULL,
    PRIMARY KEY (guild_id, word)
);

CREATE TABLE blocked_members (
    guild_id   INTEGER NOT NULL,
    user_id    INTEGER NOT NULL,
    reason     TEXT NOT NULL DEFAULT '',
    blocked_by INTEGER NOT NULL,
    blocked_at REAL NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

CREATE TABLE mod_actions (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id       INTEGER NOT NULL,
    moderator_id   INTEGER NOT NULL,
    moderator_name TEXT NOT NULL DEFAULT '',
    action         TEXT NOT NULL,
    target         TEXT NOT NULL DEFAULT '',
    before_json    TEXT,
    after_json     TEXT,
    at             REAL NOT NULL
);
CREATE INDEX mod_actions_by_guild ON mod_actions (guild_id, id);

-- Jobs that no longer count against their member's quotas although they started (a moderator cancelled them).
CREATE TABLE quota_refunds (
    job_id      TEXT PRIMARY KEY REFERENCES jobs (id) ON DELETE CASCADE,
    refunded_by INTEGER NOT NULL,
    at          REAL NOT NULL
);

-- Each member's roles as their last command showed them (the bot has no members intent): the running cap of
-- a role override applies to their queued jobs after a restart too, before they interact again.
CREATE TABLE member_roles_seen (
    guild_id INTEGER NOT NULL,
    user_id  INTEGER NOT NULL,
    role_ids TEXT NOT NULL DEFAULT '[]',
    seen_at  REAL NOT NULL,
    PRIMARY KEY (guild_id, user_id)
);

-- Quotas and /stats count a server's jobs by time.
CREATE INDEX jobs_by_guild_created ON jobs (guild_id, created_at);
