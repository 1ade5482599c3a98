-- 0002_provenance: datasets, dataset links, lineage edges, movable tags, model-card/config facts,
-- eval results, and the views and macros for the provenance questions people ask.
-- Every row comes from a manifest (lineage, metadata) or an event in the store
-- (catalog/provenance.py), so `weightvault catalog rebuild` recreates all of it.
-- Timestamps are UTC TIMESTAMP, like 0001.

-- One row per `dataset` event. A dataset record may be re-added (corrected): the
-- `datasets` view shows the latest record per (name, version), whatever order events arrive in.
CREATE TABLE dataset_records (
    event_id     VARCHAR PRIMARY KEY,     -- the event that recorded it
    name         VARCHAR NOT NULL,        -- e.g. 'wikipedia-en' or 'org/name'
    version      VARCHAR NOT NULL,        -- label, e.g. '20231101' or '1'
    source_uri   VARCHAR,                 -- where it came from: https://, s3://, hf-dataset:org/name, file path
    content_hash VARCHAR,                 -- 'sha256:<hex>' of the file, or of a folder's listing (dataset fingerprint)
    license      VARCHAR,                 -- SPDX id or expression ('CC-BY-SA-4.0', 'MIT OR Apache-2.0')
    cutoff_date  DATE,                    -- last date of data collection
    n_tokens     BIGINT,
    n_rows       BIGINT,
    description  VARCHAR,
    extra        JSON,                    -- anything else (Croissant fields, languages, ...)
    recorded_at  TIMESTAMP NOT NULL
);

CREATE VIEW datasets AS
SELECT name, version, source_uri, content_hash, license, cutoff_date, n_tokens, n_rows, description, extra,
       recorded_at, event_id
FROM (SELECT *, row_number() OVER (PARTITION BY name, version ORDER BY recorded_at DESC, event_id DESC) AS rn
      FROM dataset_records)
WHERE rn = 1;

-- Version <-> dataset, from the manifest (`snapshot --dataset`) or a `link` event.
CREATE TABLE version_datasets (
    version_id      VARCHAR NOT NULL,     -- manifest ID of the model version
    dataset         VARCHAR NOT NULL,     -- dataset name
    dataset_version VARCHAR NOT NULL,
    role            VARCHAR NOT NULL CHECK (role IN ('pretrain', 'finetune', 'eval', 'distill')),
    origin          VARCHAR NOT NULL,     -- 'manifest' or 'event'
    linked_at       TIMESTAMP,
    event_id        VARCHAR,              -- the link event, NULL for manifest links
    PRIMARY KEY (version_id, dataset, dataset_version, role)
);

-- Lineage: one edge from a child version to its base. `version_id` is the child.
-- `base_id` is a version in this store; `base_ref` an external base such as 'hf:org/name'.
-- For relation 'distilled' the base is the teacher, and teacher_id / prompt_set_hash /
-- settings / run_id describe how the training data was generated (issue 5 fills them).
CREATE TABLE lineage_edges (
    edge_key        VARCHAR PRIMARY KEY,  -- child|relation|base: one row per distinct edge
    version_id      VARCHAR NOT NULL,     -- the child version's manifest ID
    relation        VARCHAR NOT NULL
        CHECK (relation IN ('finetune', 'adapter', 'merge', 'quantized', 'cast', 'distilled')),
    base_id         VARCHAR,
    base_ref        VARCHAR,
    teacher_id      VARCHAR,              -- distilled only: the teacher's manifest ID (= base_id)
    prompt_set_hash VARCHAR,              -- distilled only
    settings        JSON,                 -- distilled only: generation settings
    run_id          VARCHAR,              -- distilled only: the distillation run
    origin          VARCHAR NOT NULL,     -- 'manifest', 'event' or 'card' (base_model in README.md)
    recorded_at     TIMESTAMP,
    event_id        VARCHAR,
    CHECK (base_id IS NOT NULL OR base_ref IS NOT NULL)
);

-- Every move of a movable tag (`weightvault tag`); version_id NULL means the tag was removed.
CREATE TABLE tag_moves (
    event_id    VARCHAR PRIMARY KEY,
    model       VARCHAR NOT NULL,
    tag         VARCHAR NOT NULL,
    version_id  VARCHAR,
    moved_at    TIMESTAMP NOT NULL,
    message     VARCHAR
);

-- Model card front matter (README.md) and config.json facts, one row per version.
CREATE TABLE model_cards (
    version_id          VARCHAR PRIMARY KEY,
    base_model          VARCHAR[],        -- card: base_model (Hub repo ids)
    base_model_relation VARCHAR,          -- card: adapter | merge | quantized | finetune
    datasets            VARCHAR[],        -- card: datasets (Hub dataset ids)
    license             VARCHAR,          -- card: license (Hub license id, e.g. apache-2.0)
    language            VARCHAR[],
    tags                VARCHAR[],
    pipeline_tag        VARCHAR,
    library_name        VARCHAR,
    architectures       VARCHAR[],        -- config.json
    model_type          VARCHAR,
    torch_dtype         VARCHAR,          -- config.json torch_dtype (or dtype)
    vocab_size          BIGINT,
    n_parameters        BIGINT            -- computed from the tensors at snapshot
);

-- Evaluation results (`eval` events).
CREATE TABLE eval_results (
    event_id        VARCHAR PRIMARY KEY,
    version_id      VARCHAR NOT NULL,
    task            VARCHAR NOT NULL,
    metric          VARCHAR NOT NULL,
    value           DOUBLE NOT NULL,
    dataset         VARCHAR,
    dataset_version VARCHAR,
    settings        JSON,
    recorded_at     TIMESTAMP NOT NULL
);

-- Readable lineage: child and base by name.
CREATE VIEW lineage AS
SELECT c.model, c.version, e.relation, b.model AS base_model, b.version AS base_version, e.base_ref,
       e.run_id, e.prompt_set_hash, e.settings, e.origin, e.version_id, e.base_id
FROM lineage_edges e
JOIN versions c ON c.version_id = e.version_id
LEFT JOIN versions b ON b.version_id = e.base_id;

-- All edges the graph walks: lineage edges plus parent links between versions of one model
-- (relation 'parent'). An external base 'hf:org/name' resolves to the latest snapshot of that
-- Hub repo when one is archived here ('hf:org/name@<commit>': the snapshot of that commit).
CREATE VIEW version_edges AS
SELECT e.version_id AS child_id,
       coalesce(e.base_id, (SELECT arg_max(h.version_id, h.created_at) FROM versions h
                            WHERE h.source_uri = split_part(e.base_ref, '@', 1)
                              AND (e.base_ref NOT LIKE '%@%'
                                   OR h.source_revision = split_part(e.base_ref, '@', 2)))) AS base_id,
       e.base_ref, e.relation, e.run_id
FROM lineage_edges e
UNION ALL
SELECT version_id, parent_id, NULL, 'parent', NULL FROM versions WHERE parent_id IS NOT NULL;

-- Every ancestor of every version (recursive). depth 1 = a direct base; `relation` is the
-- relation of the edge that reaches the ancestor, `via_id` the version on that edge's child side,
-- `own_relation` / `own_run_id` those of the version's own (first) edge on the path.
-- External bases appear with ancestor_id NULL and ancestor_ref set.
CREATE VIEW version_ancestors AS
WITH RECURSIVE walk(version_id, via_id, ancestor_id, ancestor_ref, relation, run_id, own_relation, own_run_id,
                    depth, path) AS (
    SELECT child_id, child_id, base_id, base_ref, relation, run_id, relation, run_id, 1, [child_id]
    FROM version_edges
    UNION ALL
    SELECT w.version_id, e.child_id, e.base_id, e.base_ref, e.relation, e.run_id, w.own_relation, w.own_run_id,
           w.depth + 1,
           list_append(w.path, e.child_id)
    FROM walk w JOIN version_edges e ON e.child_id = w.ancestor_id
    WHERE NOT coalesce(list_contains(w.path, e.base_id), false) AND w.depth < 64  -- cycle guard
)
SELECT w.version_id, v.model, v.version, w.depth, w.relation, w.ancestor_id,
       a.model AS ancestor_model, a.version AS ancestor_version,
       CASE WHEN w.ancestor_id IS NULL THEN w.ancestor_ref END AS ancestor_ref, w.via_id, w.run_id,
       w.own_relation, w.own_run_id
FROM walk w
JOIN versions v ON v.version_id = w.version_id
LEFT JOIN versions a ON a.version_id = w.ancestor_id;

-- The same closure seen from the ancestor: every descendant of every version; `relation` is the
-- descendant's own edge (a student shows 'distilled' under its teacher's base too).
CREATE VIEW version_descendants AS
SELECT ancestor_id AS version_id, ancestor_model AS model, ancestor_version AS version, depth,
       own_relation AS relation,
       version_id AS descendant_id, model AS descendant_model, version AS descendant_version,
       own_run_id AS run_id
FROM version_ancestors WHERE ancestor_id IS NOT NULL;

-- Students of teachers: one row per 'distilled' edge.
CREATE VIEW students AS
SELECT t.model AS teacher_model, t.version AS teacher_version, s.model AS student_model,
       s.version AS student_version, e.run_id, e.prompt_set_hash, e.settings,
       e.teacher_id, e.version_id AS student_id
FROM lineage_edges e
JOIN versions s ON s.version_id = e.version_id
LEFT JOIN versions t ON t.version_id = e.teacher_id
WHERE e.relation = 'distilled';

-- The data behind every version: its own links (depth 0) and those of its ancestors
-- (inherited, depth >= 1, via_model/via_version the ancestor that was linked), with the dataset's facts.
CREATE VIEW version_data AS
WITH links AS (
    SELECT version_id, version_id AS source_id, 0 AS depth FROM versions
    UNION ALL
    SELECT version_id, ancestor_id, depth FROM version_ancestors WHERE ancestor_id IS NOT NULL
)
SELECT v.model, v.version, l.depth,
       CASE WHEN l.depth > 0 THEN src.model END AS via_model,
       CASE WHEN l.depth > 0 THEN src.version END AS via_version,
       vd.dataset, vd.dataset_version, vd.role, d.license, d.cutoff_date, d.n_tokens, d.n_rows,
       d.content_hash, v.version_id
FROM links l
JOIN versions v ON v.version_id = l.version_id
JOIN versions src ON src.version_id = l.source_id
JOIN version_datasets vd ON vd.version_id = l.source_id
LEFT JOIN datasets d ON d.name = vd.dataset AND d.version = vd.dataset_version;

-- Licence audit per version: the card's licence, the licences of the data it was trained on
-- (own and inherited, eval data excluded) and the training datasets with no licence recorded.
CREATE VIEW license_audit AS
SELECT v.model, v.version, c.license AS model_license,
       list(DISTINCT vd.license ORDER BY vd.license) FILTER (WHERE vd.license IS NOT NULL) AS data_licenses,
       list(DISTINCT vd.dataset || '@' || vd.dataset_version ORDER BY vd.dataset || '@' || vd.dataset_version)
           FILTER (WHERE vd.dataset IS NOT NULL AND vd.license IS NULL) AS unlicensed_data,
       v.version_id
FROM versions v
LEFT JOIN model_cards c USING (version_id)
LEFT JOIN version_data vd ON vd.version_id = v.version_id AND vd.role <> 'eval'
GROUP BY v.model, v.version, c.license, v.version_id;

-- Datasets whose licence or collection cutoff is unknown, with how many versions use them.
CREATE VIEW dataset_gaps AS
SELECT d.name, d.version, d.license IS NULL AS missing_license, d.cutoff_date IS NULL AS missing_cutoff,
       (SELECT count(DISTINCT vd.version_id) FROM version_datasets vd
        WHERE vd.dataset = d.name AND vd.dataset_version = d.version) AS n_versions
FROM datasets d
WHERE d.license IS NULL OR d.cutoff_date IS NULL;

-- The current position of every tag: snapshot-time tags (`snapshot --tag`) and tag moves
-- together; the latest wins, whatever order the events arrived in.
CREATE VIEW tag_history AS
SELECT v.model, t.tag, t.version_id, v.created_at AS moved_at, 'snapshot' AS origin, NULL AS message,
       t.version_id AS event_id
FROM version_tags t JOIN versions v USING (version_id)
UNION ALL
SELECT model, tag, version_id, moved_at, 'event', message, event_id FROM tag_moves;

CREATE VIEW tags AS
SELECT h.model, h.tag, v.version, h.version_id, h.moved_at
FROM (SELECT *, row_number() OVER (PARTITION BY model, tag ORDER BY moved_at DESC, event_id DESC) AS rn
      FROM tag_history) h
LEFT JOIN versions v ON v.version_id = h.version_id
WHERE h.rn = 1 AND h.version_id IS NOT NULL;

-- Model families: each version belongs to the family of its deepest in-store ancestor
-- (the root, named by the root's model); a version with no ancestor is its own root.
CREATE VIEW version_family AS
SELECT v.version_id, v.model, v.version,
       coalesce((SELECT arg_max(a.ancestor_id, (a.depth, a.ancestor_id)) FROM version_ancestors a
                 WHERE a.version_id = v.version_id AND a.ancestor_id IS NOT NULL), v.version_id) AS root_id
FROM versions v;

-- Storage per model family: chunks shared inside a family are counted once.
CREATE VIEW family_storage AS
WITH fam AS (
    SELECT f.version_id, f.model, r.model AS family FROM version_family f JOIN versions r ON r.version_id = f.root_id
), fc AS (
    SELECT DISTINCT fam.family, vc.chunk_id FROM fam JOIN version_chunks vc USING (version_id)
), bytes AS (
    SELECT fc.family, sum(c.raw_bytes) AS unique_raw_bytes, sum(c.stored_bytes) AS stored_bytes
    FROM fc JOIN chunks c USING (chunk_id) GROUP BY fc.family
)
SELECT fam.family, count(DISTINCT fam.model) AS n_models, count(*) AS n_versions,
       sum(v.raw_bytes) AS raw_bytes, any_value(b.unique_raw_bytes) AS unique_raw_bytes,
       any_value(b.stored_bytes) AS stored_bytes
FROM fam JOIN versions v USING (version_id) LEFT JOIN bytes b USING (family)
GROUP BY fam.family;

-- Table macros for the everyday questions (parameters are model name and version label).
CREATE MACRO ancestors(of_model, of_version) AS TABLE
    SELECT depth, relation, ancestor_model, ancestor_version, ancestor_ref, run_id
    FROM version_ancestors WHERE model = of_model AND version = of_version
    ORDER BY depth, ancestor_model, ancestor_version, ancestor_ref;

CREATE MACRO descendants(of_model, of_version) AS TABLE
    SELECT depth, relation, descendant_model, descendant_version, run_id
    FROM version_descendants WHERE model = of_model AND version = of_version
    ORDER BY depth, descendant_model, descendant_version;

CREATE MACRO students_of(of_model, of_version) AS TABLE
    SELECT student_model, student_version, run_id, prompt_set_hash, settings
    FROM students WHERE teacher_model = of_model AND teacher_version = of_version
    ORDER BY student_model, student_version;

-- Versions trained on a dataset (any version of it when of_version is NULL), directly or through an ancestor.
CREATE MACRO trained_on(of_dataset, of_version) AS TABLE
    SELECT DISTINCT model, version, dataset_version, role, via_model, via_version, depth
    FROM version_data
    WHERE dataset = of_dataset AND (of_version IS NULL OR dataset_version = of_version) AND role <> 'eval'
    ORDER BY model, version, depth;
