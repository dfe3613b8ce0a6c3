-- A job's DreamSpec is stored whole, as one versioned JSON document (DreamSpec.to_document), instead of one
-- column per setting: adding a setting then needs no migration, since a document without it loads with the
-- setting's default. No SQL filters or orders on a setting, so none keeps a column of its own.
-- init_latents_path stays a column: it names a file the bot keeps, not a setting.
ALTER TABLE jobs ADD COLUMN spec TEXT NOT NULL DEFAULT '{}';

-- The floats with 17 significant digits: SQLite 3.40's own JSON text has only 15, which does not always give the
-- same double back (0.07 reads back exactly from either; 17 digits show it as 0.070000000000000007).
UPDATE jobs SET spec = json_object(
    'version', 1,
    'prompt', prompt,
    'negative', negative,
    'seed', seed,
    'steps', steps,
    'size', size,
    'cutouts', cutouts,
    'learning_rate', json(printf('%!.17g', learning_rate)),
    'ema_decay', json(printf('%!.17g', ema_decay)),
    'max_classes', max_classes,
    'init_noise', json(printf('%!.17g', init_noise))
);

ALTER TABLE jobs DROP COLUMN prompt;
ALTER TABLE jobs DROP COLUMN negative;
ALTER TABLE jobs DROP COLUMN seed;
ALTER TABLE jobs DROP COLUMN steps;
ALTER TABLE jobs DROP COLUMN size;
ALTER TABLE jobs DROP COLUMN cutouts;
ALTER TABLE jobs DROP COLUMN learning_rate;
ALTER TABLE jobs DROP COLUMN ema_decay;
ALTER TABLE jobs DROP COLUMN max_classes;
ALTER TABLE jobs DROP COLUMN init_noise;
