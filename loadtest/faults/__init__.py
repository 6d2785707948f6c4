"""The fault-injection suite of issue #7: `python -m loadtest.faults CASE|all|soak`. See docs/reliability.md."""
