-- Progress, reports and analytics (storage/analytics.py).

-- The attempts already added to user_topic_progress. apply_progress() inserts here in the same statement
-- that adds the counts, so an attempt is counted once however often it is offered (a replayed flush, a
-- backfill racing the flusher). A narrow table of its own keeps the flusher's test_attempts rows insert-only.
CREATE TABLE attempt_progress (
    session_id text PRIMARY KEY REFERENCES test_attempts (session_id),
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Questions presented but left unanswered; `attempted` keeps NEET's sense (answered), so accuracy is
-- correct / attempted and the questions seen are attempted + skipped.
ALTER TABLE user_topic_progress ADD COLUMN skipped integer NOT NULL DEFAULT 0;

-- Reports and the global "last 24 hours" figure select attempts by when they finished.
CREATE INDEX test_attempts_finished ON test_attempts (finished_at);

-- One report per kind, template or user, and period: `examhub report` run twice replaces, never doubles.
CREATE UNIQUE INDEX performance_reports_period
    ON performance_reports (kind, template_id, user_id, period_start) NULLS NOT DISTINCT;
CREATE INDEX performance_reports_template ON performance_reports (template_id, period_start DESC);
