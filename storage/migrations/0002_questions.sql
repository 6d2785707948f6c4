-- Question authoring (issue #3): review notes, edit history, and the lookup that decides whether an edit may
-- happen in place. See storage/questions.py.

ALTER TABLE questions
    ADD COLUMN review_note text NOT NULL DEFAULT '',
    ADD COLUMN reviewed_at timestamptz,
    -- An edit of a question some paper already holds retires it and points here to its new version.
    ADD COLUMN replaced_by bigint REFERENCES questions (id);
CREATE INDEX questions_replaced_by ON questions (replaced_by) WHERE replaced_by IS NOT NULL;

-- "Is this question in a paper not yet written to `responses`?" scans only unfinished sessions (finished ones
-- have a responses row per question of their paper, found through responses_question).
CREATE INDEX test_sessions_unfinished ON test_sessions (created_at) WHERE finished_at IS NULL;
