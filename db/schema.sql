-- db/schema.sql — bitplan's database, version 1.
--
-- The database is the hand-off between measure, allocate, pack, eval and report:
-- a measurement is paid for once and reused for every target. Only db/ speaks SQL.
-- Open with WAL journaling and foreign keys on (db_open does both).
--
-- Invariants:
--  1. A model is identified by the SHA-256 of its file(s); a calibration by the
--     hash of (model, source files' hashes, rows, ctx, tokenizer). Measurements
--     hang off a calibration, so two models or two calibration sets never mix.
--  2. A measurement row is written in one transaction with everything it implies;
--     a row present means the (tensor, option) is done. Resume = skip present rows.
--  3. `bits` is always lay_tensor_bits() of the option for the tensor's shape.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE models (
    id           INTEGER PRIMARY KEY,
    content_hash TEXT NOT NULL UNIQUE,      -- sha256 hex of the model file(s)
    path         TEXT NOT NULL,             -- where it was last seen
    arch         TEXT NOT NULL,             -- "llama", ...
    config_json  TEXT NOT NULL,             -- mdl_config as JSON
    n_params     INTEGER NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (datetime('now'))
);

CREATE TABLE tensors (
    id          INTEGER PRIMARY KEY,
    model_id    INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,              -- canonical GGUF name
    layer       INTEGER NOT NULL,           -- block index; -1 for the head
    class       TEXT NOT NULL CHECK (class IN ('q','k','v','o','gate','up','down','head')),
    input_group TEXT NOT NULL CHECK (input_group IN ('attn','attn_out','mlp','mlp_out','head')),
    rows        INTEGER NOT NULL CHECK (rows > 0),   -- out_features
    cols        INTEGER NOT NULL CHECK (cols > 0),   -- in_features
    UNIQUE (model_id, name)
);

CREATE TABLE calibrations (
    id           INTEGER PRIMARY KEY,
    model_id     INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
    key          TEXT NOT NULL,             -- sha256 of everything below
    sources_json TEXT NOT NULL,             -- [{"path":..., "sha256":...}, ...]
    rows         INTEGER NOT NULL,
    ctx          INTEGER NOT NULL,
    tokenizer    TEXT NOT NULL,             -- tokenizer kind and vocabulary hash
    damp         REAL NOT NULL,             -- GPTQ damping used
    status       TEXT NOT NULL DEFAULT 'running' CHECK (status IN ('running','done')),
    created_at   TEXT NOT NULL DEFAULT (datetime('now')),
    UNIQUE (model_id, key)
);

CREATE TABLE options (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    bits_lo    INTEGER NOT NULL CHECK (bits_lo BETWEEN 2 AND 8),
    bits_hi    INTEGER NOT NULL CHECK (bits_hi BETWEEN bits_lo AND 8),
    hi_share   REAL NOT NULL CHECK (hi_share BETWEEN 0 AND 1),
    group_size INTEGER NOT NULL CHECK (group_size > 0 AND group_size % 32 = 0),
    scale_fmt  INTEGER NOT NULL,            -- lay_scale_fmt
    UNIQUE (bits_lo, bits_hi, hi_share, group_size, scale_fmt)
);

-- Which options a calibration's measurement covers (its option set).
CREATE TABLE calibration_options (
    calib_id  INTEGER NOT NULL REFERENCES calibrations(id) ON DELETE CASCADE,
    option_id INTEGER NOT NULL REFERENCES options(id),
    PRIMARY KEY (calib_id, option_id)
);

CREATE TABLE measurements (
    calib_id  INTEGER NOT NULL REFERENCES calibrations(id) ON DELETE CASCADE,
    tensor_id INTEGER NOT NULL REFERENCES tensors(id) ON DELETE CASCADE,
    option_id INTEGER NOT NULL REFERENCES options(id),
    bits      INTEGER NOT NULL,             -- exact stored bits (lay_tensor_bits)
    rel_err   REAL NOT NULL,                -- tr(dW H dW^T) / tr(W H W^T), GPTQ
    rtn_err   REAL,                         -- same metric, round-to-nearest, for comparison
    seconds   REAL NOT NULL,
    PRIMARY KEY (calib_id, tensor_id, option_id)
);

-- --kl-probe: KL divergence of the final logits with this tensor alone quantized
-- at option_id (the reference option), and that option's rel_err, so that
-- predicted_kld(tensor, option) = kld * rel_err(option) / rel_err.
CREATE TABLE kl_probes (
    calib_id  INTEGER NOT NULL REFERENCES calibrations(id) ON DELETE CASCADE,
    tensor_id INTEGER NOT NULL REFERENCES tensors(id) ON DELETE CASCADE,
    option_id INTEGER NOT NULL REFERENCES options(id),
    kld       REAL NOT NULL,
    rel_err   REAL NOT NULL,
    seconds   REAL NOT NULL,
    PRIMARY KEY (calib_id, tensor_id)
);

CREATE TABLE plans (
    id            INTEGER PRIMARY KEY,
    calib_id      INTEGER NOT NULL REFERENCES calibrations(id) ON DELETE CASCADE,
    kind          TEXT NOT NULL CHECK (kind IN ('bpw','vram','size')),
    target        REAL NOT NULL,            -- bpw, or bytes for 'vram' and 'size' (the file's tensors)
    metric        TEXT NOT NULL CHECK (metric IN ('rel_err','kld')),
    achieved_bpw  REAL NOT NULL,            -- over the quantized linear layers
    file_bpw      REAL NOT NULL,            -- over every parameter of the file
    total_bits    INTEGER NOT NULL,         -- sum of the chosen options' bits
    objective     REAL NOT NULL,
    gap           REAL NOT NULL,            -- relative optimality gap
    solve_seconds REAL NOT NULL,
    n_dropped     INTEGER NOT NULL DEFAULT 0, -- dominated options dropped
    memory_json   TEXT,                     -- 'vram': every term of the memory model
    sweep         TEXT,                     -- label shared by the plans of one --sweep
    command       TEXT NOT NULL,            -- the command line that made it
    created_at    TEXT NOT NULL DEFAULT (datetime('now'))
);

CREATE TABLE plan_choices (
    plan_id   INTEGER NOT NULL REFERENCES plans(id) ON DELETE CASCADE,
    tensor_id INTEGER NOT NULL REFERENCES tensors(id),
    option_id INTEGER NOT NULL REFERENCES options(id),
    bits      INTEGER NOT NULL,
    predicted REAL NOT NULL,                -- the damage the objective counted
    PRIMARY KEY (plan_id, tensor_id)
);

CREATE TABLE evals (
    id           INTEGER PRIMARY KEY,
    model_id     INTEGER REFERENCES models(id),   -- the full-precision model
    plan_id      INTEGER REFERENCES plans(id),    -- NULL for an unquantized model
    subject      TEXT NOT NULL,                   -- path evaluated
    subject_kind TEXT NOT NULL CHECK (subject_kind IN ('model','packed')),
    bpw          REAL,
    text_path    TEXT NOT NULL,
    text_hash    TEXT NOT NULL,
    ctx          INTEGER NOT NULL,
    tokens       INTEGER NOT NULL,              -- tokens scored
    ppl          REAL NOT NULL,
    ppl_stderr   REAL,
    kld          REAL,                          -- NULL without --ref
    kld_stderr   REAL,
    top1         REAL,
    ref_path     TEXT,
    device       TEXT NOT NULL DEFAULT 'cpu',
    command      TEXT NOT NULL,
    created_at   TEXT NOT NULL DEFAULT (datetime('now'))
);

CREATE INDEX measurements_tensor ON measurements (tensor_id, option_id);
CREATE INDEX plan_choices_tensor ON plan_choices (tensor_id);
