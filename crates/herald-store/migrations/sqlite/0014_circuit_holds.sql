-- Provider circuits held open by hand: every delivering node reads these
-- and calls no held provider until the hold is released.
CREATE TABLE circuit_holds (
    provider  TEXT PRIMARY KEY,
    held_by   TEXT NOT NULL,
    reason    TEXT NOT NULL,
    since_ms  INTEGER NOT NULL
);
