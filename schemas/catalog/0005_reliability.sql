-- 0005_reliability: what rm, repair and sign recorded, as views over the store's events.
-- Events are hash-named records in the store, so these survive `weightvault catalog rebuild`.

-- Versions removed with `weightvault rm` (their history stays; gc frees their bytes).
CREATE VIEW version_removals AS
SELECT event_id, created_at AS removed_at,
       payload->>'model' AS model, payload->>'version' AS version,
       payload->>'manifest' AS version_id, payload->>'reason' AS reason
FROM events WHERE type = 'removed';

-- What `weightvault repair` found lost: one row per damaged file of a version.
CREATE VIEW version_damage AS
SELECT e.event_id, e.created_at AS found_at,
       e.payload->>'model' AS model, e.payload->>'version' AS version,
       e.payload->>'manifest' AS version_id,
       u.f.path AS path, u.f.tensors AS tensors, u.f.chunks AS chunk_ids,
       u.f.lost_bytes AS lost_bytes, u.f.header_lost AS header_lost
FROM events e,
     unnest(from_json(e.payload->'files',
         '[{"path":"VARCHAR","tensors":["VARCHAR"],"chunks":["VARCHAR"],"lost_bytes":"BIGINT","header_lost":"BOOLEAN"}]')) AS u(f)
WHERE e.type = 'damage';

-- DSSE-signed in-toto statements made with `weightvault sign`.
CREATE VIEW signatures AS
SELECT event_id, created_at AS signed_at,
       payload->>'model' AS model, payload->>'version' AS version,
       payload->>'manifest' AS version_id, payload->>'keyid' AS keyid,
       payload->>'statement_sha256' AS statement_sha256
FROM events WHERE type = 'signature';
