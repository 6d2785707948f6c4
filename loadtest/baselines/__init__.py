"""Comparison servers for issue #6, kept small so that anyone can check them.

- `ceiling`: the fastest anything on examhub's stack can be (aiohttp WebSocket, coalesced Redis pipeline, ack).
- `http_pg`: the usual alternative, an HTTP POST per answer written straight to PostgreSQL.
"""
