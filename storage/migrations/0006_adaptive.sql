-- Adaptive tests over the hub (issue #8): an attempt's ability estimate. (An adaptive paper grows by one item
-- per answer; the flusher writes the final one into test_sessions.paper.)
ALTER TABLE test_attempts
    ADD COLUMN ability      double precision,  -- EAP estimate of theta; NULL for fixed-form tests
    ADD COLUMN ability_se   double precision,  -- its posterior standard deviation
    ADD COLUMN scaled_score integer;           -- 400 + 100 * theta, clipped to [0, 800]
