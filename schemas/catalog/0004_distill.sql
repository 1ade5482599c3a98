-- 0004_distill: one row per distillation run, indexed from the store's `distill_run` events
-- (weightvault/distill.py). Rebuilt by `weightvault catalog rebuild` from those events alone.

CREATE TABLE distill_runs (
    run_id               VARCHAR PRIMARY KEY,   -- 16 hex, named by --rerun and --distilled-from
    event_id             VARCHAR NOT NULL,      -- the `distill_run` event holding the full recipe
    created_at           TIMESTAMPTZ NOT NULL,
    teacher_id           VARCHAR NOT NULL,      -- the teacher's manifest ID (its exact identity)
    teacher_ref          VARCHAR,               -- NAME@V at the time of the run
    teacher_kind         VARCHAR,               -- causal-lm, masked-lm, encoder
    prompt_set_hash      VARCHAR NOT NULL,      -- BLAKE3 of the prompt file's bytes
    prompt_count         INTEGER NOT NULL,
    prompt_file          VARCHAR,               -- the file's name as given
    max_new_tokens       INTEGER,
    top_k                INTEGER,               -- top-k ids/log-probs stored per token
    temperature          DOUBLE,                -- 0 = greedy
    seed                 BIGINT,
    batch_size           INTEGER,
    device               VARCHAR,               -- cpu, cuda:0, ...
    dtype                VARCHAR,               -- float32, bfloat16, ...
    torch_version        VARCHAR,
    transformers_version VARCHAR,
    weightvault_version  VARCHAR,
    output_sha256        VARCHAR,               -- sha256 of the Parquet file
    output_rows          BIGINT,
    output_tokens        BIGINT,                -- generated (causal) or encoded (encoder) tokens
    complete             BOOLEAN,               -- false when stopped by Ctrl-C (finished rows kept)
    output_path          VARCHAR,               -- where the Parquet file was written
    data_version_id      VARCHAR,               -- manifest of distill-runs@<run_id> (prompts + output)
    settings             JSON,                  -- every generation setting as recorded
    seconds              DOUBLE                 -- generation wall time
);
