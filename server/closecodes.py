"""WebSocket close codes, in one place (documented in docs/protocol.md).

Ranges, as centrifuge does it:
  4000-4499  terminal: do NOT reconnect (fix the cause first: a new token, a new session, ...)
  4500-4999  transient: reconnect with backoff and jitter, then resume
Standard codes we use: 1001 going away (server shutting down: reconnect), 1009 message too big (terminal
for that message; the client must not resend it), 1011 internal error (reconnect).
"""

from __future__ import annotations

from enum import IntEnum


class Close(IntEnum):
    GOING_AWAY = 1001
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011

    SESSION_FINISHED = 4000  # the attempt is over; read the result over REST
    UNAUTHORIZED = 4001  # missing, invalid or expired token
    FORBIDDEN_ORIGIN = 4003  # the Origin header is not allowed
    SESSION_NOT_FOUND = 4004
    SUPERSEDED = 4009  # a newer connection took this session over (fenced)
    PROTOCOL_ERROR = 4400  # too many invalid frames

    SLOW_CONSUMER = 4500  # the client did not read fast enough; its send queue overflowed
    STORAGE_UNAVAILABLE = 4503  # Redis did not answer; the last write may or may not be saved: resume from last_seq
    RATE_LIMITED = 4529  # kept sending far beyond the message rate limit: reconnect after a backoff, then resume


def reconnect(code: int) -> bool:
    """Whether a client should reconnect after this close code."""
    return code in (Close.GOING_AWAY, Close.INTERNAL_ERROR, 1006) or 4500 <= code <= 4999
