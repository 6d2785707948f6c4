-- Proctoring: who may watch which exam, and the audit trail of everything done to a session's time or fate.

CREATE TABLE proctor_assignments (
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    template_id bigint NOT NULL REFERENCES test_templates (id) ON DELETE CASCADE,
    assigned_by uuid REFERENCES users (id),
    assigned_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, template_id)
);
CREATE INDEX proctor_assignments_template ON proctor_assignments (template_id);

-- One row per proctor action (who, when, why, what it did) and per automatic deadline change (the time
-- ledger's disconnect credits, written by the flusher with actor NULL = the system). `source` makes the
-- flusher's rows idempotent: a replayed flush inserts nothing twice.
CREATE TABLE audit_log (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id  text,
    template_id bigint,
    actor_id    uuid REFERENCES users (id),
    action      text NOT NULL,
    reason      text NOT NULL DEFAULT '',
    params      jsonb NOT NULL DEFAULT '{}',
    outcome     text NOT NULL,
    source      text UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_session ON audit_log (session_id, created_at);
CREATE INDEX audit_log_template ON audit_log (template_id, created_at);
