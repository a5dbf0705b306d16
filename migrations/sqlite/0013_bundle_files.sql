-- The files of each bundle (a JSON list of paths), recorded at push: an apply refuses a
-- Clusterfile Config that no image of the cluster can take, instead of every host
-- skipping it. NULL for bundles pushed before (not checked).
ALTER TABLE bundles ADD COLUMN files TEXT;
