-- 0008_distill_reruns: which run regenerated which (`weightvault distill --rerun RUN`), and the
-- library versions each run recorded beyond torch and transformers. Views over the `distill_run`
-- events, so `weightvault catalog rebuild` keeps them.

-- One row per rerun: the run, the run it regenerated, and both outputs' rows. (Their bytes always
-- differ: each file names its own run; `weightvault distill --rerun` compares the data.)
CREATE VIEW distill_reruns AS
SELECT r.run_id, e.payload->>'rerun_of' AS rerun_of, r.created_at, r.teacher_ref, r.complete,
       r.output_rows, o.output_rows AS original_output_rows
FROM distill_runs r
JOIN events e USING (event_id)
LEFT JOIN distill_runs o ON o.run_id = e.payload->>'rerun_of'
WHERE e.payload->>'rerun_of' IS NOT NULL;

-- Every library version a run recorded (torch, transformers, tokenizers, python, weightvault, ...):
-- one row per run and library.
CREATE VIEW distill_run_versions AS
SELECT r.run_id, k.library, e.payload->'versions'->>k.library AS version
FROM distill_runs r
JOIN events e USING (event_id),
     unnest(json_keys(e.payload->'versions')) AS k(library);
