-- examhub core schema: users, content, templates, sessions, attempts and their analytics.
-- Applied by storage/migrate.py under an advisory lock, once, in order.

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username      text NOT NULL UNIQUE,
    display_name  text NOT NULL DEFAULT '',
    email         text UNIQUE,
    tier          text NOT NULL DEFAULT 'free' CHECK (tier IN ('free', 'enrolled')),
    role          text NOT NULL DEFAULT 'student' CHECK (role IN ('student', 'proctor', 'admin')),
    password_hash text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    disabled_at   timestamptz
);

CREATE TABLE login_sessions (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    token_id    text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    ip          inet,
    user_agent  text
);
CREATE INDEX login_sessions_user ON login_sessions (user_id, created_at DESC);

CREATE TABLE questions (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    ref                 text UNIQUE,
    subject             text NOT NULL DEFAULT 'biology',
    curriculum          text NOT NULL DEFAULT '',
    grade               text NOT NULL DEFAULT '',
    topic               text NOT NULL,
    type                text NOT NULL DEFAULT 'single_choice' CHECK (type IN ('single_choice')),
    difficulty          text NOT NULL CHECK (difficulty IN ('easy', 'medium', 'hard')),
    text                text NOT NULL,
    options             jsonb NOT NULL,
    correct             text NOT NULL,
    explanation         text NOT NULL DEFAULT '',
    marks               integer NOT NULL DEFAULT 4 CHECK (marks > 0),
    category            text NOT NULL DEFAULT '',
    verification_status text NOT NULL DEFAULT 'unverified'
                        CHECK (verification_status IN ('unverified', 'verified', 'rejected')),
    reviewer_id         uuid REFERENCES users (id),
    normalized_hash     text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    retired_at          timestamptz
);
CREATE INDEX questions_topic_difficulty ON questions (topic, difficulty) WHERE retired_at IS NULL;
CREATE INDEX questions_curriculum_grade ON questions (curriculum, grade) WHERE retired_at IS NULL;
CREATE INDEX questions_normalized_hash ON questions (normalized_hash);

CREATE TABLE question_banks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    subject     text NOT NULL DEFAULT '',
    curriculum  text NOT NULL DEFAULT '',
    grade       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE question_bank_members (
    bank_id     bigint NOT NULL REFERENCES question_banks (id) ON DELETE CASCADE,
    question_id bigint NOT NULL REFERENCES questions (id),
    added_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bank_id, question_id)
);
CREATE INDEX question_bank_members_question ON question_bank_members (question_id);

CREATE TABLE test_templates (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    bank_id     bigint NOT NULL REFERENCES question_banks (id),
    config      jsonb NOT NULL,   -- paper rule, duration, marking scheme, anti-cheat policy, grace
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE test_sessions (
    id            text PRIMARY KEY,  -- also the Redis session id
    token_id      text NOT NULL UNIQUE,
    user_id       uuid NOT NULL REFERENCES users (id),
    template_id   bigint NOT NULL REFERENCES test_templates (id),
    status        text NOT NULL DEFAULT 'created',
    paper         jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    deadline_at   timestamptz,
    finished_at   timestamptz,
    finish_reason text
);
CREATE INDEX test_sessions_user ON test_sessions (user_id, created_at DESC);
CREATE INDEX test_sessions_template_status ON test_sessions (template_id, status);

CREATE TABLE test_attempts (
    session_id   text PRIMARY KEY REFERENCES test_sessions (id),
    user_id      uuid NOT NULL REFERENCES users (id),
    template_id  bigint NOT NULL REFERENCES test_templates (id),
    status       text NOT NULL,
    reason       text NOT NULL,
    score        integer NOT NULL,
    max_score    integer NOT NULL,
    min_score    integer NOT NULL,
    correct      integer NOT NULL,
    wrong        integer NOT NULL,
    skipped      integer NOT NULL,
    violations   integer NOT NULL DEFAULT 0,
    flagged      boolean NOT NULL DEFAULT false,
    started_at   timestamptz,
    finished_at  timestamptz NOT NULL,
    flushed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX test_attempts_template_score ON test_attempts (template_id, score DESC);
CREATE INDEX test_attempts_user ON test_attempts (user_id, finished_at DESC);

CREATE TABLE attempt_analytics (
    session_id  text NOT NULL REFERENCES test_attempts (session_id),
    topic       text NOT NULL,
    correct     integer NOT NULL,
    wrong       integer NOT NULL,
    skipped     integer NOT NULL,
    score       integer NOT NULL,
    max_score   integer NOT NULL,
    PRIMARY KEY (session_id, topic)
);

CREATE TABLE responses (
    session_id        text NOT NULL REFERENCES test_attempts (session_id),
    question_id       bigint NOT NULL REFERENCES questions (id),
    user_id           uuid NOT NULL,
    position          integer NOT NULL,
    choice            text,
    is_correct        boolean,
    marks             integer NOT NULL,
    marked_for_review boolean NOT NULL DEFAULT false,
    time_spent_ms     integer NOT NULL DEFAULT 0,
    seq               bigint,
    answered_at       timestamptz,
    PRIMARY KEY (session_id, question_id)
);
CREATE INDEX responses_user_time ON responses (user_id, answered_at DESC);
CREATE INDEX responses_question ON responses (question_id);

CREATE TABLE anticheat_events (
    session_id  text NOT NULL REFERENCES test_sessions (id),
    idx         integer NOT NULL,
    kind        text NOT NULL,
    seq         bigint,
    occurred_at timestamptz NOT NULL,
    PRIMARY KEY (session_id, idx)
);

CREATE TABLE user_topic_progress (
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    topic           text NOT NULL,
    attempted       integer NOT NULL DEFAULT 0,
    correct         integer NOT NULL DEFAULT 0,
    wrong           integer NOT NULL DEFAULT 0,
    time_spent_ms   bigint NOT NULL DEFAULT 0,
    last_attempt_at timestamptz,
    PRIMARY KEY (user_id, topic)
);

CREATE TABLE performance_reports (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text NOT NULL,
    user_id      uuid REFERENCES users (id) ON DELETE CASCADE,
    template_id  bigint REFERENCES test_templates (id),
    period_start timestamptz NOT NULL,
    period_end   timestamptz NOT NULL,
    body         jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX performance_reports_user ON performance_reports (user_id, period_end DESC);

CREATE TABLE analytics_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL,
    user_id     uuid,
    session_id  text,
    payload     jsonb NOT NULL DEFAULT '{}',
    occurred_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX analytics_events_time ON analytics_events (occurred_at);
