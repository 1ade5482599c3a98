-- 0009_removed_tags: a tag given at snapshot time (`snapshot --tag`) outlives `rm` of its version, as
-- a tag moved with `weightvault tag` does. Before, such a tag lived only in the removed version's
-- rows (`version_tags`), so `rm` erased it from `tags` and `tag_history`: `NAME@TAG` then said "no
-- such version" instead of naming the removed version, and the history of what the tag meant was
-- gone. `rm` now records the manifest's tags in its `removed` event (removals recorded before this
-- release carry none), and the history keeps them from there.

CREATE OR REPLACE VIEW tag_history AS
SELECT v.model, t.tag, t.version_id, v.created_at AS moved_at, 'snapshot' AS origin, NULL AS message,
       t.version_id AS event_id
FROM version_tags t JOIN versions v USING (version_id)
UNION ALL
-- a removed version's snapshot-time tags; moved at when its ref was created (a rerun of an
-- interrupted rm may record the removal twice)
SELECT any_value(e.payload->>'model'), u.tag, e.payload->>'manifest',
       min(try_cast(e.payload->>'created_at' AS TIMESTAMP)), 'snapshot', NULL, e.payload->>'manifest'
FROM events e, unnest(from_json(coalesce(e.payload->'tags', '[]'), '["VARCHAR"]')) AS u(tag)
WHERE e.type = 'removed' AND e.payload->>'manifest' IS NOT NULL AND u.tag IS NOT NULL
  AND e.payload->>'manifest' NOT IN (SELECT version_id FROM versions)
GROUP BY e.payload->>'manifest', u.tag
UNION ALL
SELECT model, tag, version_id, moved_at, 'event', message, event_id FROM tag_moves;
