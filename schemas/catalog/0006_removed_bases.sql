-- 0006_removed_bases: an ancestor removed with `weightvault rm` keeps its name in the lineage views.
-- Its versions row is gone, but its removal record (an event in the store) still names it; before
-- this migration `lineage` showed its base as NULL@NULL and `ancestors()` returned an empty name,
-- and the walk stopped there; rm now records the removed manifest's own edges, so it goes on.
-- And an unpinned external base 'hf:org/name' (what a model card's base_model says) also resolves
-- to the latest version of a model named 'org/name' when no Hub snapshot of that repo is archived:
-- the base snapshot encodes such a version against (archive/snapshot.py lineage_base).

-- Model and version of every removed manifest (a rerun of an interrupted rm may record it twice).
CREATE VIEW removed_versions AS
SELECT payload->>'manifest' AS version_id, any_value(payload->>'model') AS model,
       any_value(payload->>'version') AS version, min(created_at) AS removed_at
FROM events WHERE type = 'removed' GROUP BY 1;

-- The edges of removed versions: rm records the manifest's parent and lineage in its event (from this
-- release), and lineage events may name a removed child. The walk goes on past a removed version.
CREATE VIEW removed_version_edges AS
WITH r AS (
    SELECT payload->>'manifest' AS child_id, any_value(payload) AS payload
    FROM events WHERE type = 'removed' GROUP BY 1
)
SELECT child_id, payload->>'parent' AS base_id, NULL AS base_ref, 'parent' AS relation, NULL AS run_id
FROM r WHERE payload->>'parent' IS NOT NULL
UNION
SELECT child_id, u.e.base, u.e.base_ref, u.e.relation, u.e.run_id
FROM r, unnest(from_json(coalesce(payload->'lineage', '[]'),
                         '[{"relation":"VARCHAR","base":"VARCHAR","base_ref":"VARCHAR","run_id":"VARCHAR"}]')) AS u(e)
UNION
SELECT payload->>'child', payload->>'base', payload->>'base_ref', payload->>'relation', payload->>'run_id'
FROM events WHERE type = 'lineage' AND payload->>'child' IN (SELECT child_id FROM r);

CREATE OR REPLACE VIEW version_edges AS
WITH e AS (
    SELECT version_id AS child_id, base_id, base_ref, relation, run_id FROM lineage_edges
    UNION
    SELECT child_id, base_id, base_ref, relation, run_id FROM removed_version_edges
    WHERE child_id NOT IN (SELECT version_id FROM versions)
)
SELECT e.child_id,
       coalesce(e.base_id,
                (SELECT arg_max(h.version_id, h.created_at) FROM versions h
                 WHERE h.source_uri = split_part(e.base_ref, '@', 1)
                   AND (e.base_ref NOT LIKE '%@%' OR h.source_revision = split_part(e.base_ref, '@', 2))),
                (SELECT arg_max(h.version_id, h.created_at) FROM versions h
                 WHERE e.base_ref NOT LIKE '%@%' AND 'hf:' || h.model = e.base_ref)) AS base_id,
       e.base_ref, e.relation, e.run_id
FROM e
UNION
SELECT version_id, parent_id, NULL, 'parent', NULL FROM versions WHERE parent_id IS NOT NULL;


CREATE OR REPLACE VIEW lineage AS
SELECT c.model, c.version, e.relation, coalesce(b.model, r.model) AS base_model,
       coalesce(b.version, r.version) AS base_version, e.base_ref,
       e.run_id, e.prompt_set_hash, e.settings, e.origin, e.version_id, e.base_id
FROM lineage_edges e
JOIN versions c ON c.version_id = e.version_id
LEFT JOIN versions b ON b.version_id = e.base_id
LEFT JOIN removed_versions r ON r.version_id = e.base_id AND b.version_id IS NULL;

CREATE OR REPLACE VIEW version_ancestors AS
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
       coalesce(a.model, r.model) AS ancestor_model, coalesce(a.version, r.version) AS ancestor_version,
       CASE WHEN w.ancestor_id IS NULL THEN w.ancestor_ref END AS ancestor_ref, w.via_id, w.run_id,
       w.own_relation, w.own_run_id
FROM walk w
JOIN versions v ON v.version_id = w.version_id
LEFT JOIN versions a ON a.version_id = w.ancestor_id
LEFT JOIN removed_versions r ON r.version_id = w.ancestor_id AND a.version_id IS NULL;
