"""The storage contract again, on the three-master cluster: every test of tests/storage/ that talks to Redis,
collected here a second time so that it takes this folder's fixtures (`redis`, `writer`, `store` and
`raw_redis` are clients of the cluster). The session store's scripts (create, open, apply, expire, control,
leave; fencing, sequence dedup, the script cache lost), the flusher's exactly-once, the cache's invalidation,
the rate limiter and the leaderboards."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis.asyncio.cluster import RedisCluster

from tests.storage.test_analytics import (  # noqa: F401 - collected again, against the cluster
    test_boards_are_filled_and_rebuilt_from_postgres,
    test_fill_after_a_score_arrived_keeps_both,
    test_flushed_attempt_updates_progress_once_when_rows_are_replayed,
    test_global_stats_counts_live_sessions,
    test_old_period_boards_expire_at_once,
    test_record_scores_keeps_the_best_per_user_with_ttls,
)
from tests.storage.test_cache import (  # noqa: F401
    cache,
    metrics,
    test_a_disabled_cache_always_loads_and_stores_nothing,
    test_a_miss_loads_and_stores_then_hits_count_per_tier,
    test_a_value_loaded_before_a_write_is_never_served_after_it,
    test_an_unreadable_entry_is_a_miss,
    test_concurrent_misses_call_the_loader_once,
    test_invalidate_deletes_exactly_the_tagged_entries,
    test_keys_and_ttls_follow_the_layout,
    test_large_values_are_compressed_and_round_trip,
    test_none_is_returned_but_not_cached,
)
from tests.storage.test_flusher import (  # noqa: F401
    test_a_dead_flushers_entries_are_claimed,
    test_crash_between_commit_and_ack_writes_no_duplicates,
    test_flush_writes_everything_once_and_sets_ttls,
    test_postgres_down_keeps_the_outbox,
)
from tests.storage.test_proctor_store import (  # noqa: F401
    test_a_killed_process_connections_count_as_dropped_not_as_a_second_device,
    test_a_process_killed_while_its_lease_holds_is_told_by_its_silent_alive_channel,
    test_a_process_of_an_earlier_version_is_not_taken_for_dead_by_its_silence,
    test_a_process_whose_lease_was_released_counts_as_gone_at_once,
    test_a_released_lease_is_forgotten_after_an_hour,
    test_a_renewal_clears_a_release_of_the_same_id,
    test_a_stale_connection_leaving_changes_nothing,
    test_a_successor_ends_its_dead_predecessors_lease_as_of_its_last_renewal,
    test_a_successor_keeps_the_release_its_predecessors_parent_made,
    test_a_successor_of_a_forgotten_process_writes_nothing,
    test_flag_and_proctor_finishes,
    test_pause_extend_resume_on_redis_clock,
    test_presence_and_the_ledger_with_automatic_credit,
    test_terminating_a_never_opened_session_keeps_its_keys,
    test_without_credit_the_time_lost_waits_for_a_proctor,
)
from tests.storage.test_ratelimit import (  # noqa: F401
    bucket,
    test_a_lost_script_cache_is_reloaded,
    test_a_refused_client_recovers_after_retry_after,
    test_several_limits_in_one_call_report_the_refusing_one,
    test_the_burst_is_allowed_then_the_rest_refused,
    test_the_redis_key_expires_when_the_bucket_is_full_again,
)
from tests.storage.test_session_store import (  # noqa: F401
    test_a_failing_call_in_a_merged_run_spares_the_others,
    test_a_run_of_applies_rides_one_script_call_each_caller_getting_its_own_reply,
    test_an_older_epoch_is_fenced,
    test_cheat_events_count_flag_and_autosubmit,
    test_create_is_once_and_expires_until_opened,
    test_deadline_on_redis_clock,
    test_many_concurrent_writes_coalesce,
    test_merged_calls_survive_script_cache_flush,
    test_not_due_yet,
    test_only_the_owner_can_take_a_session_over,
    test_racing_sweepers_expire_exactly_once,
    test_round_trip_and_sequence_dedup,
    test_writer_survives_script_cache_flush,
    test_writes_after_finish_are_refused,
)


@pytest.fixture
async def raw_redis(redis: RedisCluster, cluster_url: str) -> AsyncIterator[RedisCluster]:
    """A bytes client of the cluster, as the cache needs (`redis` deletes this test's keys afterwards)."""
    client = RedisCluster.from_url(cluster_url, decode_responses=False)
    yield client
    await client.aclose()
