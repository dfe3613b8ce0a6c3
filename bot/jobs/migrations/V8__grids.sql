-- Grids (/imagine count:2-4): a grid is `grid_size` ordinary jobs made together, seeds seed, seed+1, ..., which
-- share `grid_id` (an id from the job ids' alphabet, never a job's id) and are told apart by `grid_index` (0 is
-- the top left image). One message shows the whole grid; its id is kept on every job of the grid. A job made
-- alone has no grid_id.
ALTER TABLE jobs ADD COLUMN grid_id TEXT;
ALTER TABLE jobs ADD COLUMN grid_index INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN grid_size INTEGER NOT NULL DEFAULT 1;
CREATE INDEX jobs_by_grid ON jobs (grid_id) WHERE grid_id IS NOT NULL;
