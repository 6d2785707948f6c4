"""Storage failures mapped once to domain errors; the hub turns them into error frames or close codes."""


class StorageError(Exception):
    """Base class of every error storage/ raises on purpose."""


class StorageUnavailable(StorageError):
    """Redis or PostgreSQL did not answer (down, hung, or timed out). Nothing was acknowledged; retry."""


class SessionNotFound(StorageError):
    pass


class UnsafeRedisConfig(StorageError):
    """Redis is configured so that it could lose acknowledged writes."""
