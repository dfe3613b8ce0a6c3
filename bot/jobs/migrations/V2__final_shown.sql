-- Whether the job's channel message already shows how it ended (result, failure or cancel): a restart
-- re-shows what a stop or crash left unshown. Jobs that ended before this column existed count as shown.

ALTER TABLE jobs ADD COLUMN final_shown INTEGER NOT NULL DEFAULT 0;
UPDATE jobs SET final_shown = 1 WHERE state IN ('done', 'failed', 'cancelled');
CREATE INDEX jobs_by_final_shown ON jobs (final_shown, state);
