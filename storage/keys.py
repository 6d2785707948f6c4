"""Every Redis key examhub uses, in one place.

Sessions are spread over PARTITIONS hash slots. All keys of one session, and the partition's deadline
index and outbox stream, carry the partition's hash tag `{pNN}`, so the scripts that finish a session and
enqueue it for PostgreSQL touch a single slot and run unchanged on Redis Cluster.

Key                          Type    Owner and lifetime
<prefix>:{pNN}:s:<sid>:meta  hash    session state. TTL `created_ttl` until opened; no TTL while active
                                     (the sweeper owns it and always finishes it); TTL `flushed_ttl` set by
                                     the flusher in the same script that acknowledges the outbox entry.
<prefix>:{pNN}:s:<sid>:ans   hash    question id -> saved answer; lifetime as meta.
<prefix>:{pNN}:s:<sid>:ev    list    anti-cheat events in order; lifetime as meta.
<prefix>:{pNN}:s:<sid>:ledger list   the time ledger: "offline_since|back_at|gap_ms|credited_ms" per return
                                     after a dropped connection; lifetime as meta.
<prefix>:{pNN}:due           zset    sid -> deadline (ms, Redis clock); owned by the sweeper: a member is
                                     removed when its session finishes.
<prefix>:{pNN}:outbox        stream  finished sessions waiting for PostgreSQL; owned by the flusher: an
                                     entry is deleted right after the commit that stored it.
<prefix>:{pNN}:hosts         hash    hub process id -> its last lease renewal (ms, Redis clock), and "<id>|gone"
                                     -> when it ended, once its parent saw it exit (server/workers.py) or its
                                     successor on its port took its place (server/succession.py), and
                                     "<id>|listens" -> its last renewal, when it listens on its alive channel; in every
                                     partition so that open.lua can read it in its own slot; owned by the hub
                                     processes: each renews its field every few seconds, and any renewal deletes
                                     fields silent for an hour (lease.lua).
<prefix>:fence               channel pub/sub: "<sid> <epoch>" when a newer connection takes a session over.
<prefix>:alive:<host>        channel pub/sub, never published to: each hub process subscribes to its own while it lives
                                     (server/proctor.py, listen_control); open.lua counts its subscribers
                                     (PUBSUB NUMSUB) to tell a process killed a moment ago from a live one.
<prefix>:{pNN}:alive:<host>  channel the same on a Redis Cluster, as sharded pub/sub: a node counts only its own
                                     subscribers, so each process subscribes (SSUBSCRIBE) to one per partition, on
                                     the node of the partition's slot (server/alive.py), and open.lua counts them
                                     there (PUBSUB SHARDNUMSUB).
<prefix>:{pNN}:ctl           channel pub/sub: "<sid> <json>" a proctor changed the session (every hub process
                                     listens to all partitions and acts for the sessions it holds).
<prefix>:bcast               channel pub/sub: {"template": id, "text": ...} a proctor's message to a whole room.
<prefix>:{r<tid>}:live       set     the sessions of a template's room (proctor snapshots); a member is added
                                     at start and removed by the flusher after the flush (readers also drop
                                     members whose keys are gone).
<prefix>:{r<tid>}:seq        string  the room feed's sequence number (INCR per published change); no TTL,
                                     owned by the room (one small integer per template).
<prefix>:{r<tid>}:feed       channel pub/sub: "<seq>|<json>" changes of the room's sessions (see server/proctor.py).
Leaderboards, the cache and rate limits document their keys in storage/analytics.py, storage/cache.py and
storage/ratelimit.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

PARTITIONS = 16  # fixed: changing it would move live sessions; 16 slots spread over up to 16 masters
FLUSH_GROUP = "flushers"


def partition_of(sid: str) -> int:
    """Session ids are random hex; their first 8 digits pick the partition."""
    return int(sid[:8], 16) % PARTITIONS


class SessionKeys(NamedTuple):  # a tuple: built on every write (Keys.session), ~3x cheaper than a frozen dataclass
    meta: str
    ans: str
    ev: str
    ledger: str
    due: str
    outbox: str


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str = "eh"
    # per partition: the session keys' common start, the deadline index and the outbox (Keys.session runs on
    # every write: these are made once, not per call)
    _partitions: tuple[tuple[str, str, str], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            raise ValueError("the key prefix must not contain braces (they would change the hash tag)")
        parts = tuple(self._part(p) for p in range(PARTITIONS))
        object.__setattr__(self, "_partitions", tuple((f"{b}:s:", f"{b}:due", f"{b}:outbox") for b in parts))

    def _part(self, partition: int) -> str:
        return f"{self.prefix}:{{p{partition:02d}}}"

    def session(self, sid: str) -> SessionKeys:
        base, due, outbox = self._partitions[partition_of(sid)]
        s = f"{base}{sid}"
        return SessionKeys(f"{s}:meta", f"{s}:ans", f"{s}:ev", f"{s}:ledger", due, outbox)

    def due(self, partition: int) -> str:
        return f"{self._part(partition)}:due"

    def outbox(self, partition: int) -> str:
        return f"{self._part(partition)}:outbox"

    def hosts(self, partition: int) -> str:
        return f"{self._part(partition)}:hosts"

    @property
    def fence_channel(self) -> str:
        return f"{self.prefix}:fence"

    @property
    def alive_prefix(self) -> str:
        return f"{self.prefix}:alive:"

    def alive_channel(self, host: str) -> str:
        return f"{self.alive_prefix}{host}"

    def alive_shard_prefix(self, partition: int) -> str:
        return f"{self._part(partition)}:alive:"

    def alive_shard_channel(self, partition: int, host: str) -> str:
        return f"{self.alive_shard_prefix(partition)}{host}"

    @property
    def broadcast_channel(self) -> str:
        return f"{self.prefix}:bcast"

    def control_channel(self, partition: int) -> str:
        return f"{self._part(partition)}:ctl"

    def _room(self, template_id: int) -> str:
        return f"{self.prefix}:{{r{template_id}}}"

    def room_live(self, template_id: int) -> str:
        return f"{self._room(template_id)}:live"

    def room_seq(self, template_id: int) -> str:
        return f"{self._room(template_id)}:seq"

    def room_feed(self, template_id: int) -> str:
        return f"{self._room(template_id)}:feed"
