-- The jobs table: one row per job, the source of truth (bot.jobs.store); the fair queue is an index over its
-- 'queued' rows.

CREATE TABLE jobs (
    id                  TEXT PRIMARY KEY,
    -- Dispatch order within a user. New jobs count up from 1; jobs re-queued at the front count down
    -- from the smallest existing value, so it may be negative.
    seq                 INTEGER NOT NULL UNIQUE,
    guild_id            INTEGER NOT NULL,
    channel_id          INTEGER NOT NULL,
    user_id             INTEGER NOT NULL,
    user_name           TEXT NOT NULL DEFAULT '',
    kind                TEXT NOT NULL CHECK (kind IN ('imagine', 'reroll', 'variation')),
    parent_job_id       TEXT REFERENCES jobs (id) ON DELETE SET NULL,
    state               TEXT NOT NULL DEFAULT 'queued'
                        CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    prompt              TEXT NOT NULL,
    negative            TEXT NOT NULL DEFAULT '',
    seed                INTEGER NOT NULL,
    steps               INTEGER NOT NULL,
    size                INTEGER NOT NULL,
    cutouts             INTEGER NOT NULL,
    learning_rate       REAL NOT NULL,
    ema_decay           REAL NOT NULL,
    max_classes         INTEGER,
    init_noise          REAL NOT NULL DEFAULT 0,
    init_latents_path   TEXT,
    created_at          REAL NOT NULL,
    started_at          REAL,
    finished_at         REAL,
    attempts            INTEGER NOT NULL DEFAULT 0,
    error               TEXT,
    progress_message_id INTEGER,
    progress_step       INTEGER NOT NULL DEFAULT 0,
    png_path            TEXT,
    latents_path        TEXT,
    timelapse_path      TEXT,
    wall_seconds        REAL
);
CREATE INDEX jobs_by_state_seq ON jobs (state, seq);
CREATE INDEX jobs_by_user_state ON jobs (user_id, state);
CREATE INDEX jobs_by_user_created ON jobs (user_id, created_at);
CREATE INDEX jobs_by_state_finished ON jobs (state, finished_at);
CREATE INDEX jobs_by_guild_state ON jobs (guild_id, state);
CREATE INDEX jobs_by_parent ON jobs (parent_job_id);
