-- Item response theory (issue #8): calibrated item parameters with their fit, exposure control parameters,
-- and pretest items. See sessions/irt.py, sessions/calibrate.py, storage/calibration.py and docs/adaptive.md.

-- One row per calibrated question, replaced by each `examhub calibrate` that fits it.
CREATE TABLE item_parameters (
    question_id   bigint PRIMARY KEY REFERENCES questions (id),
    model         text NOT NULL CHECK (model IN ('2pl', '3pl')),
    a             double precision NOT NULL,   -- discrimination (logistic metric, no 1.702)
    b             double precision NOT NULL,   -- difficulty
    c             double precision NOT NULL DEFAULT 0 CHECK (c >= 0 AND c < 1),  -- guessing floor (0 in the 2PL)
    se_a          double precision,            -- standard errors (NULL: not estimable, or held fixed)
    se_b          double precision,
    se_c          double precision,
    n             integer NOT NULL,            -- responses the fit used
    fit_chi2      double precision,            -- observed vs expected proportion right over ability groups
    fit_df        integer,
    fit_p         double precision,
    flagged       boolean NOT NULL DEFAULT false,
    reason        text NOT NULL DEFAULT '',    -- why it is flagged ('; '-separated)
    -- Sympson-Hetter: the chance an item is given when it is the most informative (1: never held back).
    exposure_k    double precision NOT NULL DEFAULT 1 CHECK (exposure_k >= 0 AND exposure_k <= 1),
    calibrated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX item_parameters_flagged ON item_parameters (question_id) WHERE flagged;

-- A pretest question is seeded unscored into adaptive tests to gather responses until it is calibrated.
ALTER TABLE questions ADD COLUMN pretest boolean NOT NULL DEFAULT false;
