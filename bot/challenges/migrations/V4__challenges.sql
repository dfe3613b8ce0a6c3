-- Challenges (bot.challenges): a theme with a deadline per server, members' entries, and votes. The constraints
-- carry the rules, so no race can break them: one open challenge per server, a job entered once per challenge,
-- one vote per member per entry, and no vote for one's own entry.

CREATE TABLE challenges (
    id                      INTEGER PRIMARY KEY AUTOINCREMENT,
    guild_id                INTEGER NOT NULL,
    channel_id              INTEGER NOT NULL,
    theme                   TEXT NOT NULL,
    created_by              INTEGER NOT NULL,
    created_at              REAL NOT NULL,
    deadline                REAL NOT NULL,
    max_entries_per_member  INTEGER NOT NULL CHECK (max_entries_per_member >= 1),
    counts_hidden           INTEGER NOT NULL DEFAULT 1,
    -- The server's upload limit as Discord last told it (in the /challenge start interaction; boosts raise it),
    -- for the results contact sheet, which is posted when no interaction is at hand.
    upload_limit            INTEGER,
    -- open: taking entries and votes; closing: deadline passed, results not posted yet (a restart finishes
    -- it); ended: results posted, archived; cancelled: stopped by a moderator, no results.
    state                   TEXT NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closing', 'ended', 'cancelled')),
    -- Entry numbers count up and are never reused, so "#3" means one image for the whole challenge.
    entries_numbered        INTEGER NOT NULL DEFAULT 0,
    announcement_message_id INTEGER,
    results_message_id      INTEGER,
    ended_at                REAL
);
CREATE UNIQUE INDEX challenges_one_open_per_guild ON challenges (guild_id) WHERE state = 'open';
CREATE INDEX challenges_by_state_deadline ON challenges (state, deadline);
CREATE INDEX challenges_by_guild_created ON challenges (guild_id, created_at);

CREATE TABLE challenge_entries (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    challenge_id INTEGER NOT NULL REFERENCES challenges (id) ON DELETE CASCADE,
    number       INTEGER NOT NULL,
    user_id      INTEGER NOT NULL,
    user_name    TEXT NOT NULL DEFAULT '',
    job_id       TEXT NOT NULL,
    prompt       TEXT NOT NULL,
    -- The bot's own copy, relative to the data dir: the job's result may be deleted, Discord's URLs expire.
    image_path   TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    message_id   INTEGER,
    -- Written when the challenge ends: the archive and the leaderboard read these.
    final_votes  INTEGER,
    place        INTEGER,
    UNIQUE (challenge_id, number),
    UNIQUE (challenge_id, job_id)
);
CREATE INDEX challenge_entries_by_user ON challenge_entries (challenge_id, user_id);

CREATE TABLE challenge_votes (
    entry_id INTEGER NOT NULL REFERENCES challenge_entries (id) ON DELETE CASCADE,
    voter_id INTEGER NOT NULL,
    voted_at REAL NOT NULL,
    PRIMARY KEY (entry_id, voter_id)
);

CREATE TRIGGER challenge_votes_not_for_oneself BEFORE INSERT ON challenge_votes
WHEN NEW.voter_id = (SELECT user_id FROM challenge_entries WHERE id = NEW.entry_id)
BEGIN
    SELECT RAISE(ABORT, 'a member cannot vote for their own entry');
END;
