"""API keys: created once, shown once, stored only as a salted digest.

A key reads ``fy_<key id>_<secret>``: the key id (12 hex characters) names the stored entry,
the secret is 32 random bytes from :mod:`secrets` (``token_urlsafe``, 43 characters). The
storage's key-value area (namespace :data:`KEYS_NAMESPACE`, key = the key id) keeps the
tenant, a name, the creation time, a random 16-byte salt and ``HMAC-SHA256(salt, secret)``;
the secret itself is never stored, logged or returned again.

Why HMAC-SHA256 and not scrypt/PBKDF2: the secrets are 256-bit random values, not passwords,
so there is nothing to brute-force that a slow key derivation would protect -- guessing a
256-bit secret is infeasible whatever the digest costs. A deliberately slow KDF would instead
cost tens of milliseconds of CPU on *every request* and hand an attacker a cheap way to load
the server with bogus keys. The per-key salt still keeps two digests of one secret apart, and
the digest is compared with :func:`hmac.compare_digest` (constant time).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from typing import Any

import attrs
from flowyard import (
    AuditRecord,
    StorageBackend,
    StorageError,
    SupportsAuditLog,
    SupportsKeyValueListing,
    local_actor,
)

__all__ = ["KEYS_NAMESPACE", "ApiKey", "KeyStore", "MAX_CACHED_KEYS", "TENANT_PATTERN",
           "USE_AUDIT_INTERVAL", "key_id_of", "valid_tenant"]

#: The key-value namespace of the key digests.
KEYS_NAMESPACE = "server.keys"
#: Tenant names: lower-case letters, digits, ``-`` and ``_``, 1 to 64 characters.
TENANT_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
_KEY = re.compile(r"fy_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_DUMMY_SALT = secrets.token_bytes(16)
#: Most verified keys a :class:`KeyStore` trusts from memory at once (then it starts over).
MAX_CACHED_KEYS = 10_000
#: Seconds between two ``api_key.used`` audit records of one key (per process): the first
#: authenticated request of a key in each such window is recorded, not every request.
USE_AUDIT_INTERVAL = 60.0


def key_id_of(key: str) -> str | None:
    """Return the key id of a well-formed key (``fy_<key id>_<secret>``), else None."""
    match = _KEY.fullmatch(key)
    return None if match is None else match.group(1)


def valid_tenant(name: str) -> bool:
    """True when ``name`` matches :data:`TENANT_PATTERN`."""
    return TENANT_PATTERN.fullmatch(name) is not None


def _digest(salt: bytes, secret: str) -> bytes:
    return hmac.new(salt, secret.encode("ascii"), hashlib.sha256).digest()


@attrs.frozen
class ApiKey:
    """What is known about a stored key (never its secret).

    Attributes:
        key_id: the 12 hex characters after ``fy_``.
        tenant: the tenant the key acts for.
        name: for humans.
        created_at: UNIX seconds.
    """

    key_id: str
    tenant: str
    name: str
    created_at: float


class KeyStore:
    """API keys kept in a storage backend's key-value area.

    Args:
        storage: an open backend that also implements
            :class:`~flowyard.SupportsKeyValueListing` (for ``list`` and ``any_keys``).
        cache_seconds: how long a verified key is trusted without reading the storage
            again (0: never; the server uses ``[server] key_cache_seconds``).
    """

    def __init__(self, storage: StorageBackend, *, cache_seconds: float = 0.0) -> None:
        self.storage = storage
        self.cache_seconds = cache_seconds
        #: SHA-256 of a verified key -> (tenant, key id, monotonic time it stops being trusted)
        self._verified: dict[bytes, tuple[str, str, float]] = {}
        #: key id -> monotonic time of its last ``api_key.used`` audit record
        self._use_recorded: dict[str, float] = {}

    async def _audit(self, action: str, actor: str, tenant: str, key_id: str,
                     details: dict[str, Any] | None = None) -> None:
        """Append one audit record when the storage keeps an audit log (the memory and SQL
        backends do; another backend's keys are not audited).

        Raises:
            StorageError: the append failed.
        """
        if isinstance(self.storage, SupportsAuditLog):
            await self.storage.append_audit([AuditRecord(
                action=action, actor=actor, tenant=tenant, resource=f"api_key:{key_id}",
                details=details or {})])

    async def _audit_use(self, tenant: str, key_id: str) -> None:
        """Record ``api_key.used`` for ``key_id``, at most once per
        :data:`USE_AUDIT_INTERVAL` seconds per key.
        """
        now = time.monotonic()
        last = self._use_recorded.get(key_id)
        if last is not None and now - last < USE_AUDIT_INTERVAL:
            return
        if len(self._use_recorded) >= MAX_CACHED_KEYS:
            self._use_recorded.clear()
        self._use_recorded[key_id] = now
        await self._audit("api_key.used", f"api_key:{key_id}", tenant, key_id)

    def _listing(self) -> SupportsKeyValueListing:
        if not isinstance(self.storage, SupportsKeyValueListing):
            raise StorageError(f"the storage backend {type(self.storage).__name__} cannot list "
                               "its key-value area (no kv_list); flowyard-server needs it")
        return self.storage

    async def create(self, tenant: str, *, name: str = "") -> tuple[str, ApiKey]:
        """Create a key for ``tenant``.

        Returns:
            ``(key, info)``: the full key, to show once, and its stored description.

        Raises:
            ValueError: ``tenant`` does not match :data:`TENANT_PATTERN`, or ``name`` is
                longer than 200 characters.
            StorageError: the backend failed.

        The creation is recorded in the audit log as ``api_key.created`` (actor: the OS user
        running the command, resource ``api_key:<key id>``; never the key).
        """
        if not valid_tenant(tenant):
            raise ValueError(f"a tenant is 1-64 characters of a-z, 0-9, '-' and '_' starting "
                             f"with a letter or digit, got {tenant!r}")
        if len(name) > 200:
            raise ValueError("a key name is at most 200 characters")
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        salt = secrets.token_bytes(16)
        info = ApiKey(key_id=key_id, tenant=tenant, name=name, created_at=time.time())
        await self.storage.kv_set(KEYS_NAMESPACE, key_id, {
            "tenant": tenant, "name": name, "created_at": info.created_at,
            "salt": salt.hex(), "digest": _digest(salt, secret).hex(),
        })
        await self._audit("api_key.created", local_actor(), tenant, key_id, {"name": name})
        return f"fy_{key_id}_{secret}", info

    async def verify(self, key: str) -> str | None:
        """Return the tenant of ``key``, or None when it is malformed, unknown or revoked.

        The digest is compared in constant time; a malformed or unknown key still costs one
        HMAC, so timing does not tell which part was wrong.

        With ``cache_seconds`` > 0, a key verified against the storage is trusted for that
        many seconds without reading the storage again (held in memory as the SHA-256 of the
        whole key, never the key; at most :data:`MAX_CACHED_KEYS`; failures are never cached).
        A revocation through this store takes effect at once; one by another process within
        ``cache_seconds``.

        A verified key is recorded in the audit log as ``api_key.used`` (actor
        ``api_key:<key id>``), at most once per key every :data:`USE_AUDIT_INTERVAL` seconds
        per process, to keep the log's volume sane.

        Raises:
            StorageError: the storage, or the audit append, failed.
        """
        match = _KEY.fullmatch(key)
        if match is None:
            _digest(_DUMMY_SALT, "x" * 43)
            return None
        if self.cache_seconds > 0:
            fingerprint = hashlib.sha256(key.encode("ascii")).digest()
            cached = self._verified.get(fingerprint)
            if cached is not None:
                if cached[2] > time.monotonic():
                    await self._audit_use(cached[0], cached[1])
                    return cached[0]
                del self._verified[fingerprint]
            tenant = await self._verify(*match.groups())
            if tenant is not None:
                if len(self._verified) >= MAX_CACHED_KEYS:
                    self._verified.clear()
                self._verified[fingerprint] = (tenant, match.group(1),
                                               time.monotonic() + self.cache_seconds)
                await self._audit_use(tenant, match.group(1))
            return tenant
        tenant = await self._verify(*match.groups())
        if tenant is not None:
            await self._audit_use(tenant, match.group(1))
        return tenant

    async def identify(self, key: str) -> tuple[str, str] | None:
        """Return ``(tenant, key id)`` of ``key``, or None when it is malformed, unknown or
        revoked (always read from the storage; compared as :meth:`verify` does).
        """
        match = _KEY.fullmatch(key)
        if match is None:
            _digest(_DUMMY_SALT, "x" * 43)
            return None
        tenant = await self._verify(*match.groups())
        return None if tenant is None else (tenant, match.group(1))

    async def tenant_of_id(self, key_id: str) -> str | None:
        """Return the tenant of the stored key ``key_id``, or None when it does not exist
        (revoked). A browser session checks its key this way on every request.
        """
        if re.fullmatch(r"[0-9a-f]{12}", key_id) is None:
            return None
        entry = await self.storage.kv_get(KEYS_NAMESPACE, key_id)
        return str(entry["tenant"]) if isinstance(entry, dict) else None

    async def _verify(self, key_id: str, secret: str) -> str | None:
        entry = await self.storage.kv_get(KEYS_NAMESPACE, key_id)
        if not isinstance(entry, dict):
            _digest(_DUMMY_SALT, secret)
            return None
        expected = bytes.fromhex(str(entry["digest"]))
        actual = _digest(bytes.fromhex(str(entry["salt"])), secret)
        if not hmac.compare_digest(actual, expected):
            return None
        return str(entry["tenant"])

    async def list(self) -> list[ApiKey]:
        """Return every stored key (without secrets), in key id order."""
        listing = self._listing()
        out: list[ApiKey] = []
        after = ""
        while True:
            page = await listing.kv_list(KEYS_NAMESPACE, after=after, limit=500)
            out.extend(_info(key_id, entry) for key_id, entry in page)
            if len(page) < 500:
                return out
            after = page[-1][0]

    async def revoke(self, key_id: str) -> bool:
        """Delete a key by its id (or by the full key); return False when it did not exist.
        A deletion is recorded in the audit log as ``api_key.revoked``.

        Raises:
            StorageError: the backend failed.
        """
        match = _KEY.fullmatch(key_id)
        if match is not None:
            key_id = match.group(1)
        if re.fullmatch(r"[0-9a-f]{12}", key_id) is None:
            return False
        for fingerprint, (_, cached_id, _) in list(self._verified.items()):
            if cached_id == key_id:
                del self._verified[fingerprint]
        entry = await self.storage.kv_get(KEYS_NAMESPACE, key_id)
        if entry is None:
            return False
        await self.storage.kv_delete(KEYS_NAMESPACE, key_id)
        tenant = str(entry["tenant"]) if isinstance(entry, dict) else ""
        await self._audit("api_key.revoked", local_actor(), tenant, key_id)
        return True

    async def any_keys(self) -> bool:
        """True when at least one key is stored (the API then requires one)."""
        return bool(await self._listing().kv_list(KEYS_NAMESPACE, limit=1))


def _info(key_id: str, entry: Any) -> ApiKey:
    return ApiKey(key_id=key_id, tenant=str(entry["tenant"]), name=str(entry.get("name", "")),
                  created_at=float(entry.get("created_at", 0.0)))
