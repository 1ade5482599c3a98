-- 0003_engine: derived variants recorded by the compression engine (issue 3).
-- Rows come from each manifest's metadata.derivations (archive/engine.py), so
-- `weightvault catalog rebuild` recreates them from the store alone. Delta
-- bases need no table: chunks.base_id and chunks.codec already hold them.

CREATE TABLE derivations (
    version_id         VARCHAR NOT NULL,  -- the derived version (manifest ID)
    tensor             VARCHAR NOT NULL,  -- tensor name (file-independent)
    dtype              VARCHAR NOT NULL,  -- its dtype, e.g. BF16
    source_version_id  VARCHAR NOT NULL,  -- the version holding the source tensor
    source_dtype       VARCHAR NOT NULL,  -- e.g. F32
    recipes            VARCHAR[] NOT NULL,-- bf16-rne, bf16-trunc, f16-rne
    pieces             INTEGER NOT NULL,  -- pieces stored as casts by this version
    exact_pieces       INTEGER NOT NULL,  -- of which the cast was exact (no residual)
    differing_elements BIGINT NOT NULL,   -- elements the residual corrects
    PRIMARY KEY (version_id, tensor)
);

-- Stored bytes per version and codec, for the chunks each version added first.
CREATE VIEW version_codecs AS
SELECT v.model, v.version, c.codec,
       count(*)            AS chunks,
       sum(c.raw_bytes)    AS raw_bytes,
       sum(c.stored_bytes) AS stored_bytes,
       v.version_id
FROM chunk_first_version f
JOIN chunks c USING (chunk_id)
JOIN versions v USING (version_id)
GROUP BY ALL;

-- Tensors of a version that are casts of another version's tensor.
CREATE VIEW tensor_derivations AS
SELECT v.model, v.version, d.tensor, d.dtype, s.model AS source_model, s.version AS source_version,
       d.source_dtype, d.recipes, d.pieces, d.exact_pieces, d.differing_elements,
       d.version_id, d.source_version_id
FROM derivations d
JOIN versions v USING (version_id)
LEFT JOIN versions s ON s.version_id = d.source_version_id;
