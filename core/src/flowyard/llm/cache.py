"""Response cache for LLM calls: opt-in per step, keyed by a hash of the normalised request.

A step asks for it with ``cache`` in ``llm.chat``'s arguments::

    - id: summarize
      uses: llm.chat
      with:
        prompt: "Summarize: {{ inputs.text }}"
        temperature: 0
        cache: true                  # or {ttl_s: 3600, allow_nondeterministic: false}

The key is the SHA-256 of the canonical JSON of the model reference as written (an alias, a
``provider/model`` or ``auto`` with its routing requirements), the messages (roles, text,
images, tool calls), and the sampling parameters (temperature, top_p, max_tokens, stop,
seed, response_schema). Two requests differing in any of them never share an entry.

Only deterministic requests are cached: ``temperature: 0`` or a ``seed``. Caching a sampled
answer would replay one sample forever, so ``cache`` on any other request is refused at
validation unless the step says ``allow_nondeterministic: true``.

Entries live in the key-value area of a storage backend, namespace :data:`CACHE_NAMESPACE`:
the stack's own storage, or the one named by ``[cache] url`` (for example a Redis server
shared by every worker: ``url = "redis://127.0.0.1:6379/1"``). A backend with native expiry
(:class:`~flowyard.interfaces.SupportsKeyValueTTL`, e.g. flowyard-redis) expires entries
itself; on others the expiry time is stored with the entry and an expired entry is deleted
when read. Configuration::

    [cache]
    url = "redis://127.0.0.1:6379/1"   # default: the stack's storage
    ttl_s = 86400                       # default time to live of an entry (seconds);
                                        # 0: entries never expire

A hit emits ``llm.cache.hit`` (``cost_usd`` 0.0, and ``saved_usd``: what the original call
cost) and makes no provider call, so no budget is reserved and no cost line is written; a
miss emits ``llm.cache.miss`` and stores the answer after the call.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from flowyard.errors import ConfigError, StorageError
from flowyard.interfaces import SupportsKeyValueListing, SupportsKeyValueTTL
from flowyard.serialization import unstructure

if TYPE_CHECKING:
    from flowyard.interfaces import StorageBackend
    from flowyard.models import Message

__all__ = ["CACHE_NAMESPACE", "CachePolicy", "CachedResponse", "ResponseCache", "request_key",
           "is_deterministic", "DEFAULT_TTL_S", "configured_policy", "default_ttl",
           "open_response_cache", "KEY_PARAMS"]

#: The key-value namespace of cached responses.
CACHE_NAMESPACE = "llm.cache"
#: Time to live of an entry when neither the step nor ``[cache] ttl_s`` sets one (one day).
DEFAULT_TTL_S = 86400.0
#: Bumped when the key's canonical form changes, so old entries are never misread.
_KEY_VERSION = 1
#: The request fields that take part in the key (besides model and messages).
KEY_PARAMS = ("temperature", "top_p", "max_tokens", "stop", "seed", "response_schema",
              "requirements", "tools", "tool_choice", "route")


def request_key(model: str, messages: Sequence[Message], params: Mapping[str, Any]) -> str:
    """Return the cache key of a request: a hex SHA-256 of its canonical JSON.

    Args:
        model: the model reference as the step wrote it (or the stack's default model).
        messages: the request's messages.
        params: the step's arguments or the call's :class:`~flowyard.models.ChatRequest`
            fields; only :data:`KEY_PARAMS` are used (tools by name, description and schema).

    Returns:
        64 hex characters.
    """
    canonical = {
        "v": _KEY_VERSION,
        "model": model,
        "messages": unstructure(list(messages)),
        "params": unstructure({k: params[k] for k in KEY_PARAMS
                               if params.get(k) is not None and params.get(k) != []}),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def is_deterministic(params: Mapping[str, Any]) -> bool:
    """True when a request asks for a reproducible answer: ``temperature`` 0 or a ``seed``."""
    return params.get("temperature") == 0 or params.get("seed") is not None


@attrs.frozen
class CachePolicy:
    """How one step uses the cache.

    Args:
        ttl_s: seconds an entry lives (None: forever).
        allow_nondeterministic: cache a request that is neither ``temperature: 0`` nor seeded.
    """

    ttl_s: float | None = DEFAULT_TTL_S
    allow_nondeterministic: bool = False

    @classmethod
    def from_argument(cls, value: Any, *, default_ttl_s: float | None = DEFAULT_TTL_S,
                      where: str = "cache") -> CachePolicy | None:
        """Read a step's ``cache`` argument.

        Args:
            value: ``true``/``false``/None, or ``{ttl_s, allow_nondeterministic}``.
            default_ttl_s: the TTL when the step gives none (``[cache] ttl_s``; None: forever).
            where: the field, for messages (``"step 'x', with.cache"``).

        Returns:
            the policy, or None when the step does not use the cache.

        Raises:
            ConfigError: a value of another shape, an unknown key, or a negative TTL.
        """
        if value is None or value is False:
            return None
        if value is True:
            return cls(ttl_s=default_ttl_s)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be true, false or a table "
                              f"{{ttl_s, allow_nondeterministic}}, got {value!r}")
        unknown = set(value) - {"ttl_s", "allow_nondeterministic"}
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))};"
                              " expected ttl_s, allow_nondeterministic")
        ttl = value.get("ttl_s", default_ttl_s)
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                                or ttl < 0 or math.isnan(ttl)):
            raise ConfigError(f"{where}.ttl_s must be a number of seconds >= 0, got {ttl!r}")
        allow = value.get("allow_nondeterministic", False)
        if not isinstance(allow, bool):
            raise ConfigError(f"{where}.allow_nondeterministic must be true or false, got "
                              f"{allow!r}")
        return cls(ttl_s=None if ttl in (None, 0) else float(ttl), allow_nondeterministic=allow)


@attrs.frozen
class CachedResponse:
    """One cached answer.

    Args:
        text: the answer text.
        provider: the provider that answered.
        model: the model id that answered.
        input_tokens: prompt tokens of the original call.
        output_tokens: output tokens of the original call.
        cost_usd: what the original call cost in US dollars (None: unknown price).
        created_at: when it was stored (seconds since the epoch).
        expires_at: when it expires (seconds since the epoch; None: never).
        tool_calls: the answer's tool calls (``{id, name, arguments}``; agents).
        finish_reason: the original call's finish reason.
    """

    text: str
    provider: str = ""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = None
    created_at: float = 0.0
    expires_at: float | None = None
    tool_calls: list[dict[str, Any]] = attrs.field(factory=list)
    finish_reason: str = "stop"

    def to_json(self) -> dict[str, Any]:
        """Return the entry as a JSON-ready dict."""
        return attrs.asdict(self)

    @classmethod
    def from_json(cls, value: Any, *, key: str) -> CachedResponse:
        """Read a stored entry.

        Raises:
            StorageError: the stored value is not an entry (names the key).
        """
        fields = {a.name for a in attrs.fields(cls)}
        if (not isinstance(value, Mapping) or not isinstance(value.get("text"), str)
                or not set(value) <= fields):
            raise StorageError(f"response cache entry {CACHE_NAMESPACE}/{key} is damaged: "
                               f"expected an object with text, got {str(value)[:120]!r}")
        try:
            return cls(**value)
        except TypeError as exc:
            raise StorageError(f"response cache entry {CACHE_NAMESPACE}/{key} is damaged: "
                               f"{exc}") from None


class ResponseCache:
    """Cached answers in a storage backend's key-value area.

    Args:
        storage: an opened storage backend.
        now: wall-clock time source (seconds since the epoch), for tests.
    """

    def __init__(self, storage: StorageBackend, *,
                 now: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self.now = now

    async def get(self, key: str) -> CachedResponse | None:
        """Return the live entry under ``key``, or None (an expired entry is deleted).

        Raises:
            StorageError: the backend failed or the entry is damaged.
        """
        value = await self.storage.kv_get(CACHE_NAMESPACE, key)
        if value is None:
            return None
        entry = CachedResponse.from_json(value, key=key)
        if entry.expires_at is not None and entry.expires_at <= self.now():
            await self.storage.kv_delete(CACHE_NAMESPACE, key)
            return None
        return entry

    async def put(self, key: str, entry: CachedResponse, *, ttl_s: float | None) -> None:
        """Store ``entry`` under ``key`` for ``ttl_s`` seconds (None: no expiry).

        Raises:
            StorageError: the backend failed.
        """
        now = self.now()
        entry = attrs.evolve(entry, created_at=now,
                             expires_at=None if ttl_s is None else now + ttl_s)
        if ttl_s is not None and isinstance(self.storage, SupportsKeyValueTTL):
            await self.storage.kv_set_ttl(CACHE_NAMESPACE, key, entry.to_json(), ttl_s=ttl_s)
        else:
            await self.storage.kv_set(CACHE_NAMESPACE, key, entry.to_json())

    async def _entries(self) -> list[tuple[str, Any]]:
        if not isinstance(self.storage, SupportsKeyValueListing):
            raise StorageError(f"{type(self.storage).__name__} cannot list its key-value area, "
                               "so the response cache cannot be listed or cleared there")
        found: list[tuple[str, Any]] = []
        after = ""
        while True:
            page = await self.storage.kv_list(CACHE_NAMESPACE, after=after, limit=500)
            found.extend(page)
            if len(page) < 500:
                return found
            after = page[-1][0]

    async def stats(self) -> dict[str, Any]:
        """Return ``{"entries", "expired", "saved_usd_per_hit"}``: live and expired entries
        and the summed original cost of the live ones (US dollars; what one hit on each
        saves). Damaged entries are counted under ``"damaged"``.

        Raises:
            StorageError: the backend cannot list its key-value area.
        """
        now = self.now()
        live = expired = damaged = 0
        saved = 0.0
        for key, value in await self._entries():
            try:
                entry = CachedResponse.from_json(value, key=key)
            except StorageError:
                damaged += 1
                continue
            if entry.expires_at is not None and entry.expires_at <= now:
                expired += 1
                continue
            live += 1
            saved += entry.cost_usd or 0.0
        return {"entries": live, "expired": expired, "damaged": damaged,
                "saved_usd_per_hit": round(saved, 9)}

    async def clear(self, *, expired_only: bool = False) -> int:
        """Delete entries (all, or only the expired and damaged ones); return how many.

        Raises:
            StorageError: the backend cannot list its key-value area.
        """
        now = self.now()
        deleted = 0
        for key, value in await self._entries():
            if expired_only:
                try:
                    entry = CachedResponse.from_json(value, key=key)
                except StorageError:
                    entry = None
                if entry is not None and (entry.expires_at is None or entry.expires_at > now):
                    continue
            await self.storage.kv_delete(CACHE_NAMESPACE, key)
            deleted += 1
        return deleted


def configured_policy(config_section: Mapping[str, Any], ref: str) -> CachePolicy | None:
    """Return the cache policy ``[cache.models."<ref>"]`` gives every call of model ``ref``
    (``true`` or ``{ttl_s, allow_nondeterministic}``), or None.

    Raises:
        ConfigError: a malformed table (names the model).
    """
    models = config_section.get("models")
    if models is None:
        return None
    if not isinstance(models, Mapping):
        raise ConfigError(f"cache.models must be a table of model references, got {models!r}")
    return CachePolicy.from_argument(models.get(ref), default_ttl_s=default_ttl(config_section),
                                     where=f"cache.models.{ref!r}")


def default_ttl(config_section: Mapping[str, Any]) -> float | None:
    """Return ``[cache] ttl_s`` (None for 0: no expiry; :data:`DEFAULT_TTL_S` when unset).

    Raises:
        ConfigError: not a number of seconds >= 0.
    """
    ttl = config_section.get("ttl_s", DEFAULT_TTL_S)
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0 or math.isnan(ttl):
        raise ConfigError(f"cache.ttl_s must be a number of seconds >= 0, got {ttl!r}")
    return None if ttl == 0 else float(ttl)


async def open_response_cache(stack: Any) -> ResponseCache:
    """Return the stack's response cache: on ``[cache] url`` when set, else on the stack's
    storage (opened if needed).

    Args:
        stack: a :class:`~flowyard.stack.Stack`.

    Raises:
        ConfigError: ``[cache] url`` is not a string.
        StorageError: the storage could not be opened.
    """
    url = stack.config.section("cache").get("url")
    if url is None:
        await stack.open()
        return ResponseCache(stack.storage)
    if not isinstance(url, str) or not url:
        raise ConfigError(f"cache.url must be a storage URL string, got {url!r}")
    return ResponseCache(await stack.open_storage(url))
