-- When the host's current certificate was issued (its not_before, unix seconds): a
-- certificate of this CA for the host that is newer than the one on record is one this
-- controller issued before it was restored from an older backup, and is accepted (and
-- recorded) once; an older one — say, from before a re-enrollment — never is.
ALTER TABLE hosts ADD COLUMN cert_not_before INTEGER;
