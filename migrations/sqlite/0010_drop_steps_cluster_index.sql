-- steps_cluster (cluster_id, ord) duplicates the prefix of steps_cluster_state
-- (cluster_id, state, ord), which every cluster-wide query already uses. Keeping it cost
-- one more B-tree insert per step: 0.72 s → 0.56 s for the 76,000 steps of a
-- 19,000-host apply (docs/performance.md, section 4).
DROP INDEX IF EXISTS steps_cluster;
