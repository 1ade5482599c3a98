-- 0007_unindexed: what the catalog could not index, instead of failing every command.
-- A ref whose manifest is missing or damaged, or a record DuckDB refuses (a number out of range),
-- is listed here with the reason, and the rest of the store stays queryable. Each sync warns about
-- what it adds here; `weightvault catalog rebuild` tries everything again.

-- Versions whose manifest could not be read or indexed (`weightvault verify` names the damage;
-- `weightvault rm MODEL@VERSION` removes the version).
CREATE TABLE unindexed_versions (
    version_id VARCHAR PRIMARY KEY,
    model VARCHAR NOT NULL,
    version VARCHAR NOT NULL,
    reason VARCHAR NOT NULL
);

-- Events kept in `events` (raw payload) whose typed rows could not be written.
CREATE TABLE unindexed_events (
    event_id VARCHAR PRIMARY KEY,
    reason VARCHAR NOT NULL
);
