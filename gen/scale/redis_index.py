"""`--redis URL`: Evol-Instruct's near-duplicate MinHash index kept in Redis (datasketch's Redis storage), shared by
the driver and every worker, so that a near-copy made by one worker is caught by another before it is paid for
(see `EvolInstruct.phase`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gen.data.records import content_id
from gen.errors import InvalidSetting
from gen.methods.evol_instruct import METHOD
from gen.methods.inputs import SeedItem


def redis_storage_config(url: str, basename: str) -> dict[str, Any]:
    """datasketch's Redis storage config for `redis://[:password@]host:port/db` (or rediss:// for TLS)."""
    try:
        from redis.connection import parse_url
    except ImportError:
        raise InvalidSetting("redis_url", "the redis client is not installed: pip install 'kdforge[redis]'") from None
    try:
        options = parse_url(url)
    except ValueError as exc:
        raise InvalidSetting("redis_url", f"redis_url {_without_password(url)}: {exc}") from None
    if options.pop("connection_class", None) is not None:
        options["ssl"] = True
    return {"type": "redis", "basename": basename.encode(), "redis": options}


def _without_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    return f"{scheme}{sep}{rest.rsplit('@', 1)[-1]}" if "@" in rest else url


def check_redis(storage: Mapping[str, Any], url: str) -> None:
    """Fail early with one line if the Redis server is not reachable (not in the middle of round 1)."""
    import redis

    try:
        redis.Redis(**storage["redis"]).ping()
    except redis.RedisError as exc:
        raise InvalidSetting("redis_url", f"redis_url {_without_password(url)}: {exc}") from None


def redis_index_storage(url: str, seed: int, items: Sequence[SeedItem], threshold: float) -> dict[str, Any]:
    """`--redis URL`: the run's near-duplicate index in Redis, checked reachable now. One index per (seed, inputs,
    threshold): a rerun finds its own keys again, another run never does."""
    name = "kdforge:evol:" + content_id(METHOD, seed, [item.id for item in items], threshold)[:20]
    storage = redis_storage_config(url, name)
    check_redis(storage, url)
    return storage
