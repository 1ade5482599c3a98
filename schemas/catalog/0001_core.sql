-- 0001_core: models, versions, files, tensors, chunks and the views users ask first.
-- The catalog is an index over the store's manifests, refs and events: every
-- row here can be rebuilt with `weightvault catalog rebuild`.
-- All timestamps are UTC, stored as TIMESTAMP (TIMESTAMPTZ would need pytz to fetch into Python).

CREATE TABLE models (
    model       VARCHAR PRIMARY KEY,   -- model name, e.g. 'minilm' or 'org/name'
    created_at  TIMESTAMP NOT NULL   -- when its first version was snapshotted
);

CREATE TABLE versions (
    version_id      VARCHAR PRIMARY KEY,  -- the manifest ID (BLAKE3 of its bytes)
    model           VARCHAR NOT NULL,
    version         VARCHAR NOT NULL,     -- label, unique per model ('1', 'v2.1', ...)
    parent_id       VARCHAR,              -- manifest ID of the parent version
    created_at      TIMESTAMP NOT NULL,
    message         VARCHAR,
    source_kind     VARCHAR,              -- 'local' or 'hf'
    source_uri      VARCHAR,              -- folder path or hf:org/name
    source_revision VARCHAR,              -- 40-hex commit for Hub snapshots
    n_files         INTEGER NOT NULL,
    n_tensors       INTEGER NOT NULL,
    n_parameters    BIGINT,               -- elements over all tensors
    raw_bytes       BIGINT NOT NULL,      -- total size of its files
    metadata        JSON,                 -- facts extracted at snapshot (card, config)
    UNIQUE (model, version)
);

CREATE TABLE version_tags (
    version_id  VARCHAR NOT NULL,
    tag         VARCHAR NOT NULL,
    PRIMARY KEY (version_id, tag)
);

CREATE TABLE files (
    version_id  VARCHAR NOT NULL,
    path        VARCHAR NOT NULL,         -- relative POSIX path
    size        BIGINT NOT NULL,
    sha256      VARCHAR NOT NULL,         -- whole-file digest (Hub/LFS compatible)
    format      VARCHAR NOT NULL,         -- 'safetensors' or 'blob'
    n_chunks    INTEGER NOT NULL,
    PRIMARY KEY (version_id, path)
);

CREATE TABLE tensors (
    version_id  VARCHAR NOT NULL,
    path        VARCHAR NOT NULL,         -- the file holding it
    name        VARCHAR NOT NULL,
    dtype       VARCHAR NOT NULL,         -- safetensors dtype: F32, BF16, ...
    shape       BIGINT[] NOT NULL,
    n_elements  BIGINT NOT NULL,
    byte_begin  BIGINT NOT NULL,          -- absolute offsets in the file
    byte_end    BIGINT NOT NULL,
    chunk_ids   VARCHAR[] NOT NULL,       -- the chunks holding its bytes, in order
    PRIMARY KEY (version_id, path, name)
);

CREATE TABLE chunks (
    chunk_id     VARCHAR PRIMARY KEY,     -- BLAKE3 of the raw bytes
    raw_bytes    BIGINT NOT NULL,
    stored_bytes BIGINT NOT NULL,         -- size of the stored container
    codec        VARCHAR NOT NULL,        -- raw, zstd, bytegroup, ...
    base_id      VARCHAR                  -- chunk this one is stored relative to (deltas)
);

CREATE TABLE file_chunks (
    version_id  VARCHAR NOT NULL,
    path        VARCHAR NOT NULL,
    seq         INTEGER NOT NULL,         -- position in the file's chunk list
    chunk_id    VARCHAR NOT NULL,
    file_offset BIGINT NOT NULL,
    raw_bytes   BIGINT NOT NULL,
    PRIMARY KEY (version_id, path, seq)
);

CREATE TABLE events (
    event_id    VARCHAR PRIMARY KEY,      -- BLAKE3 of the event record
    type        VARCHAR NOT NULL,
    created_at  TIMESTAMP NOT NULL,
    payload     JSON NOT NULL
);

-- Distinct chunks per version.
CREATE VIEW version_chunks AS
SELECT DISTINCT version_id, chunk_id FROM file_chunks;

-- The version that first stored each chunk (earliest created_at).
CREATE VIEW chunk_first_version AS
SELECT chunk_id, arg_min(version_id, created_at) AS version_id
FROM version_chunks JOIN versions USING (version_id)
GROUP BY chunk_id;

-- Versions with their raw size and the bytes each one added to the store.
CREATE VIEW version_storage AS
WITH added AS (
    SELECT f.version_id,
           count(*)            AS added_chunks,
           sum(c.raw_bytes)    AS added_raw_bytes,
           sum(c.stored_bytes) AS added_stored_bytes
    FROM chunk_first_version f JOIN chunks c USING (chunk_id)
    GROUP BY f.version_id
), refd AS (
    SELECT vc.version_id, count(*) AS n_chunks, sum(c.raw_bytes) AS unique_raw_bytes,
           sum(c.stored_bytes) AS referenced_stored_bytes
    FROM version_chunks vc JOIN chunks c USING (chunk_id)
    GROUP BY vc.version_id
)
SELECT v.model, v.version, v.created_at, v.raw_bytes,
       coalesce(a.added_stored_bytes, 0) AS added_stored_bytes,
       coalesce(a.added_raw_bytes, 0)    AS added_raw_bytes,
       coalesce(a.added_chunks, 0)       AS added_chunks,
       coalesce(r.n_chunks, 0)           AS n_chunks,
       coalesce(r.unique_raw_bytes, 0)   AS unique_raw_bytes,
       coalesce(r.referenced_stored_bytes, 0) AS referenced_stored_bytes,
       v.n_files, v.n_tensors, v.message, v.version_id, v.parent_id
FROM versions v
LEFT JOIN added a USING (version_id)
LEFT JOIN refd r USING (version_id);

-- What each version shares with its parent.
CREATE VIEW version_parent_shared AS
SELECT v.model, v.version, p.version AS parent_version,
       count(*) FILTER (WHERE pc.chunk_id IS NOT NULL)                      AS shared_chunks,
       count(*) FILTER (WHERE pc.chunk_id IS NULL)                          AS new_chunks,
       coalesce(sum(c.raw_bytes) FILTER (WHERE pc.chunk_id IS NOT NULL), 0) AS shared_raw_bytes,
       coalesce(sum(c.raw_bytes) FILTER (WHERE pc.chunk_id IS NULL), 0)     AS new_raw_bytes,
       v.version_id, v.parent_id
FROM versions v
JOIN versions p ON p.version_id = v.parent_id
JOIN version_chunks vc ON vc.version_id = v.version_id
JOIN chunks c ON c.chunk_id = vc.chunk_id
LEFT JOIN version_chunks pc ON pc.version_id = v.parent_id AND pc.chunk_id = vc.chunk_id
GROUP BY ALL;

-- Storage per model: raw bytes of all its versions, distinct bytes, stored bytes.
CREATE VIEW model_storage AS
WITH mc AS (
    SELECT DISTINCT v.model, vc.chunk_id
    FROM version_chunks vc JOIN versions v USING (version_id)
), chunk_totals AS (
    SELECT mc.model, sum(c.raw_bytes) AS unique_raw_bytes, sum(c.stored_bytes) AS stored_bytes
    FROM mc JOIN chunks c USING (chunk_id) GROUP BY mc.model
), vs AS (
    SELECT model, count(*) AS n_versions, sum(raw_bytes) AS raw_bytes,
           sum(added_stored_bytes) AS added_stored_bytes, max(created_at) AS last_snapshot
    FROM version_storage GROUP BY model
)
SELECT vs.model, vs.n_versions, vs.raw_bytes,
       coalesce(t.unique_raw_bytes, 0) AS unique_raw_bytes,
       coalesce(t.stored_bytes, 0)     AS stored_bytes,
       vs.added_stored_bytes,
       vs.last_snapshot
FROM vs LEFT JOIN chunk_totals t USING (model);
