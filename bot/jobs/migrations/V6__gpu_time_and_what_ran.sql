-- What the worker really made a job's image with (a DreamSpec document, like `spec`): it differs from `spec`
-- when the job ran out of memory and was made with fewer cutouts. NULL until the job is done, and for jobs done
-- before this column existed.
ALTER TABLE jobs ADD COLUMN ran_spec TEXT;

-- GPU time of every ended run of a job (done, failed, cancelled, handed back), and when the last one ended:
-- what a server's GPU budget counts. Jobs from before keep what the budget counted for them then: a done job its
-- worker's wall_seconds, one cancelled while running the time it ran; failed and re-queued runs were not recorded.
ALTER TABLE jobs ADD COLUMN gpu_seconds REAL NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN gpu_spent_at REAL;
UPDATE jobs SET gpu_seconds = COALESCE(wall_seconds, 0), gpu_spent_at = finished_at WHERE state = 'done';
UPDATE jobs SET gpu_seconds = MAX(0, finished_at - started_at), gpu_spent_at = finished_at
    WHERE state = 'cancelled' AND started_at IS NOT NULL AND finished_at IS NOT NULL;
