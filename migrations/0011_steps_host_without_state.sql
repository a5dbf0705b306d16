-- Scale: steps_host keyed (host_id, state) moved its entry on every state change of a
-- step, a delete and an insert in the B-tree for each report. Keyed by host alone it is
-- untouched by reports (a host has a handful of steps per generation, so the queries that
-- also ask for a state read them all by host and filter). Reports of 512 steps in one
-- transaction: ~25 → ~20 ms of SQLite's time (docs/performance.md, section 4).
DROP INDEX IF EXISTS steps_host;
CREATE INDEX steps_host ON steps(host_id);
