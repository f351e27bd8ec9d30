"""The key store: provider secrets (API keys) kept out of ``flowyard.toml`` and the environment.

It lives in the core, not in a plugin, because every provider plugin resolves its key through
the core's configuration: a value ``api_key = "keystore:openai"`` in any provider's table is
resolved by :func:`resolve_secret`, which the plugins reach through the top-level ``flowyard``
API (the only API a plugin may import). A plugin key store would have to be imported by every
provider plugin, or loaded before them, and the ``keystore:`` reference would mean nothing
while it is disabled.

Two backends, chosen by ``[keystore] backend`` (see docs/keys.md):

``keyring``
    The system keyring through the ``keyring`` library (macOS Keychain, Windows Credential
    Locker, the Secret Service on a Linux desktop). An unusable keyring (``keyring``'s
    ``fail``/``null`` backends, usual on a headless Linux) is an error.
``file``
    One file (``[keystore] path``, default ``<data_dir>/keystore.json``) holding every key as
    one AES-256-GCM ciphertext, with the key derived from a passphrase by scrypt. The
    passphrase comes from ``FLOWYARD_KEYSTORE_PASSPHRASE`` or a prompt, never from a command
    line argument. The file is written 0600 through a temporary file, ``fsync`` and
    ``os.replace`` (never a readable or half-written moment), under an exclusive ``flock`` of
    ``<path>.lock`` so that concurrent writers lose nothing.
``auto`` (the default)
    ``keyring`` when a usable system keyring exists, else ``file``; ``flowyard keys list``
    says which one was chosen and why.

Values never appear in this module's errors or reprs: messages name the key, the backend and
the file, never the secret.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from flowyard.config import Config
from flowyard.errors import FlowyardError

__all__ = [
    "KEYSTORE_PREFIX",
    "ENV_PREFIX_REF",
    "PASSPHRASE_ENV",
    "NEW_PASSPHRASE_ENV",
    "KeyStore",
    "KeyStoreError",
    "WrongPassphraseError",
    "CorruptKeyStoreError",
    "open_keystore",
    "resolve_secret",
    "mask",
]

#: A configuration value ``"keystore:<name>"`` is resolved from the key store.
KEYSTORE_PREFIX = "keystore:"
#: A configuration value ``"env:<VARIABLE>"`` is resolved from the environment.
ENV_PREFIX_REF = "env:"
#: The environment variable holding the file backend's passphrase.
PASSPHRASE_ENV = "FLOWYARD_KEYSTORE_PASSPHRASE"
#: The environment variable holding the new passphrase for ``flowyard keys rotate``.
NEW_PASSPHRASE_ENV = "FLOWYARD_KEYSTORE_NEW_PASSPHRASE"

BACKENDS = ("auto", "keyring", "file")
_FORMAT = "flowyard-keystore"
_VERSION = 1
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_INDEX = "__flowyard_index__"

#: scrypt's cost parameters. The cryptography documentation of ``Scrypt``
#: (https://cryptography.io/en/latest/hazmat/primitives/key-derivation-functions/#scrypt)
#: follows RFC 7914 (https://www.rfc-editor.org/rfc/rfc7914#section-2): ``r=8, p=1``, ``n`` a
#: power of 2 scaled to the machine, at least ``2**14`` for interactive use. ``2**17`` (128 MiB,
#: about 0.7 s here) is the OWASP Password Storage Cheat Sheet's minimum for scrypt; the key is
#: derived once per process. ``[keystore] scrypt_n`` may raise it (or lower it, not below
#: ``2**14``) for a file created or rotated afterwards; the file records what it was made with.
SCRYPT_N = 2**17
SCRYPT_R = 8
SCRYPT_P = 1
_SCRYPT_N_RANGE = (2**14, 2**22)
_SALT_BYTES = 16
#: AES-GCM's nonce: 96 bits, the length NIST SP 800-38D and the cryptography documentation of
#: ``AESGCM`` recommend; a fresh random nonce for every write (never reused with a key).
_NONCE_BYTES = 12


class KeyStoreError(FlowyardError):
    """The key store cannot do what was asked (no such key, no usable backend, no passphrase).

    The message names the key, the backend and the file; never a secret value.
    """


class WrongPassphraseError(KeyStoreError):
    """The passphrase does not open the key-store file (AES-GCM's authentication tag failed)."""


class CorruptKeyStoreError(KeyStoreError):
    """The key-store file is not a key store this version can read; the message names it."""


def mask(value: str) -> str:
    """Return a masked form of a secret for display: its length and at most its last 4 chars.

    Args:
        value: the secret.

    Returns:
        ``"********wxyz (40 characters)"``; the tail is left out below 16 characters.
    """
    tail = value[-4:] if len(value) >= 16 else ""
    return f"********{tail} ({len(value)} characters)"


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == _INDEX:
        raise KeyStoreError(f"invalid key name {name!r}: use 1-128 letters, digits, '.', '_' "
                            "or '-', starting with a letter or digit")
    return name


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise ValueError("not a base64 string")
    return base64.b64decode(text.encode("ascii"), validate=True)


def keyring_status() -> tuple[Any, str]:
    """Return ``(backend, "")`` for a usable system keyring, else ``(None, why)``.

    Returns:
        The ``keyring`` backend object and an empty reason, or None and a reason naming the
        backend ``keyring`` found (its ``fail`` or ``null`` backend, or none at all).
    """
    try:
        import keyring
        from keyring.backends import chainer, fail, null
    except ImportError as exc:  # the core depends on keyring; a broken install says so
        return None, f"the keyring library cannot be imported ({exc})"
    backend = keyring.get_keyring()
    name = f"{type(backend).__module__}.{type(backend).__name__}"
    if isinstance(backend, (fail.Keyring, null.Keyring)):
        return None, f"no usable system keyring ({name})"
    if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
        return None, f"no usable system keyring ({name} with no backends)"
    return backend, ""


class KeyStore:
    """Provider secrets by name, in the system keyring or in a passphrase-encrypted file.

    Use :func:`open_keystore` to build one from the configuration. The file backend derives its
    AES-256-GCM key with scrypt (``n=2**17, r=8, p=1`` by default), following the cryptography
    documentation of ``Scrypt`` and RFC 7914
    (https://cryptography.io/en/latest/hazmat/primitives/key-derivation-functions/#scrypt),
    and encrypts with ``AESGCM`` and a random 96-bit nonce per write
    (https://cryptography.io/en/latest/hazmat/primitives/aead/#cryptography.hazmat.primitives.ciphers.aead.AESGCM).

    Args:
        backend: ``"keyring"`` or ``"file"`` (already chosen; see :func:`open_keystore`).
        path: the file backend's file.
        passphrase: returns the file backend's passphrase (called at most once; its result is
            not kept, only the key derived from it). Default: ``$FLOWYARD_KEYSTORE_PASSPHRASE``,
            else an error.
        service: the keyring service name entries are stored under.
        scrypt_n: scrypt's ``n`` for a file created or rotated by this store.
        reason: why this backend was chosen (shown by ``flowyard keys list``).

    Raises:
        KeyStoreError: an unknown backend or an ``scrypt_n`` that is not a power of 2 in
            ``[2**14, 2**22]``.
    """

    def __init__(self, backend: str, *, path: Path, passphrase: Callable[[], str] | None = None,
                 service: str = "flowyard", scrypt_n: int = SCRYPT_N, reason: str = "") -> None:
        if backend not in ("keyring", "file"):
            raise KeyStoreError(f"key store backend must be 'keyring' or 'file', got {backend!r}")
        low, high = _SCRYPT_N_RANGE
        if (isinstance(scrypt_n, bool) or not isinstance(scrypt_n, int)
                or not low <= scrypt_n <= high or scrypt_n & (scrypt_n - 1)):
            raise KeyStoreError(f"[keystore] scrypt_n must be a power of 2 from 2**14 to 2**22, "
                                f"got {scrypt_n!r}")
        self.backend = backend
        self.path = Path(path)
        self.service = service
        self.scrypt_n = scrypt_n
        self.reason = reason
        self._passphrase_source = passphrase
        self._passphrase: bytes | None = None
        self._derived: dict[tuple[bytes, int, int, int], bytes] = {}
        #: (salt, n, r, p) of the file as last read or written.
        self._file_kdf: tuple[bytes, int, int, int] | None = None

    def __repr__(self) -> str:
        where = str(self.path) if self.backend == "file" else f"service {self.service!r}"
        return f"KeyStore(backend={self.backend!r}, {where})"

    def describe(self) -> str:
        """Return one line naming the backend, where it keeps keys and why it was chosen.

        Returns:
            For example ``"file /home/me/.local/share/flowyard/keystore.json (auto: no usable
            system keyring (keyring.backends.fail.Keyring))"``.
        """
        where = f"file {self.path}" if self.backend == "file" else (
            f"keyring (service {self.service!r})")
        return f"{where} ({self.reason})" if self.reason else where

    # ------------------------------------------------------------------ operations

    def get(self, name: str) -> str | None:
        """Return the secret stored under ``name``, or None.

        Args:
            name: the key's name.

        Returns:
            The secret, or None when no key has that name.

        Raises:
            KeyStoreError: the backend fails (no passphrase, a wrong one, a corrupt file, a
                keyring error).
        """
        _check_name(name)
        if self.backend == "keyring":
            return self._keyring_call("read", lambda kr: kr.get_password(self.service, name))
        return self._read_file().get(name)

    def list(self) -> list[str]:
        """Return the names of the stored keys, sorted.

        Raises:
            KeyStoreError: the backend fails.
        """
        if self.backend == "keyring":
            return sorted(self._keyring_index())
        return sorted(self._read_file())

    def set(self, name: str, value: str) -> None:
        """Store ``value`` under ``name``, replacing any previous value.

        Args:
            name: the key's name (letters, digits, ``.``, ``_``, ``-``).
            value: the secret (non-empty).

        Raises:
            KeyStoreError: an invalid name, an empty value, or the backend fails; nothing is
                written then.
        """
        _check_name(name)
        if not isinstance(value, str) or not value:
            raise KeyStoreError(f"key {name!r}: the value must be a non-empty string")
        if self.backend == "keyring":
            with self._locked():
                self._keyring_call("write", lambda kr: kr.set_password(self.service, name, value))
                index = self._keyring_index()
                if name not in index:
                    self._write_index([*index, name])
            return
        with self._locked():
            keys = self._read_file(missing_ok=True)
            keys[name] = value
            self._write_file(keys)

    def delete(self, name: str) -> bool:
        """Remove the key ``name``.

        Args:
            name: the key's name.

        Returns:
            True when it existed.

        Raises:
            KeyStoreError: the backend fails; nothing is changed then.
        """
        _check_name(name)
        if self.backend == "keyring":
            with self._locked():
                if self._keyring_call("read", lambda kr: kr.get_password(self.service, name)
                                      ) is None:
                    return False
                self._keyring_call("delete",
                                   lambda kr: kr.delete_password(self.service, name))
                self._write_index([n for n in self._keyring_index() if n != name])
            return True
        with self._locked():
            keys = self._read_file(missing_ok=True)
            if name not in keys:
                return False
            del keys[name]
            self._write_file(keys)
        return True

    def rotate(self, new_passphrase: str | None = None) -> int:
        """Re-encrypt every key under a new salt (and ``new_passphrase`` when given), atomically.

        The file is replaced in one ``os.replace``: a crash leaves the old file (old
        passphrase) or the new one, never a mix.

        Args:
            new_passphrase: the passphrase from now on; None keeps the current one (a new salt
                and nonce still give a new encryption key).

        Returns:
            The number of keys re-encrypted.

        Raises:
            KeyStoreError: the keyring backend (the system keyring encrypts its own entries),
                no key-store file, an empty new passphrase, or the current passphrase fails.
        """
        if self.backend != "file":
            raise KeyStoreError("rotate applies to the file backend only: the system keyring "
                                "encrypts its entries itself")
        if new_passphrase is not None and not new_passphrase:
            raise KeyStoreError("the new passphrase must not be empty")
        with self._locked():
            if not self.path.exists():
                raise KeyStoreError(f"{self.path}: no key-store file to rotate")
            keys = self._read_file()
            if new_passphrase is not None:
                self._passphrase = new_passphrase.encode("utf-8")
            self._write_file(keys, new_salt=True)
        return len(keys)

    # ------------------------------------------------------------------ the file backend

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold an exclusive ``flock`` on ``<path>.lock`` (the keyring backend's index too)."""
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _get_passphrase(self) -> bytes:
        if self._passphrase is None:
            value = os.environ.get(PASSPHRASE_ENV)
            if not value and self._passphrase_source is not None:
                value = self._passphrase_source()
            if not value:
                raise KeyStoreError(f"{self.path}: the key store needs a passphrase: set "
                                    f"{PASSPHRASE_ENV} (or run flowyard keys in a terminal to "
                                    "be asked for it)")
            self._passphrase = value.encode("utf-8")
        return self._passphrase

    def _derive(self, salt: bytes, n: int, r: int, p: int) -> bytes:
        from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

        cache_key = (salt, n, r, p)
        if cache_key not in self._derived:
            self._derived = {cache_key: Scrypt(salt=salt, length=32, n=n, r=r, p=p)
                             .derive(self._get_passphrase())}
        return self._derived[cache_key]

    def _read_file(self, *, missing_ok: bool = True) -> dict[str, str]:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            if missing_ok:
                return {}
            raise KeyStoreError(f"{self.path}: no key-store file") from None
        except OSError as exc:
            raise KeyStoreError(f"{self.path}: cannot read the key store: {exc.strerror}"
                                ) from None
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
                raise ValueError("not a flowyard key store")
            if doc.get("version") != _VERSION:
                raise ValueError(f"version {doc.get('version')!r} (this flowyard reads "
                                 f"{_VERSION})")
            kdf = doc["kdf"]
            if not isinstance(kdf, dict) or kdf.get("name") != "scrypt":
                raise ValueError("unknown key derivation")
            n, r, p = (kdf[k] for k in ("n", "r", "p"))
            if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                       for v in (n, r, p)) or n > _SCRYPT_N_RANGE[1] or n & (n - 1):
                raise ValueError("invalid scrypt parameters")
            salt, nonce = _unb64(kdf["salt"]), _unb64(doc["nonce"])
            ciphertext = _unb64(doc["ciphertext"])
            if len(nonce) != _NONCE_BYTES or not salt:
                raise ValueError("invalid salt or nonce")
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise CorruptKeyStoreError(f"{self.path}: corrupt key-store file ({exc}); it was "
                                       "left as it is") from None
        key = self._derive(salt, n, r, p)
        try:
            plain = AESGCM(key).decrypt(nonce, ciphertext, _aad(doc))
        except InvalidTag:
            raise WrongPassphraseError(
                f"{self.path}: wrong passphrase: the authentication tag does not match (the "
                f"passphrase, from {PASSPHRASE_ENV} or the prompt, is not the one the file "
                "was written with, or the file was altered); nothing was changed") from None
        try:
            keys = json.loads(plain)["keys"]
            if not isinstance(keys, dict) or not all(
                    isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
                raise ValueError("keys is not a table of strings")
        except (ValueError, KeyError, TypeError):
            raise CorruptKeyStoreError(f"{self.path}: corrupt key-store contents; it was left "
                                       "as it is") from None
        self._file_kdf = (salt, n, r, p)
        return dict(keys)

    def _write_file(self, keys: Mapping[str, str], *, new_salt: bool = False) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        current = self._file_kdf
        if new_salt or current is None or not self.path.exists():
            salt, n, r, p = os.urandom(_SALT_BYTES), self.scrypt_n, SCRYPT_R, SCRYPT_P
        else:
            salt, n, r, p = current
        key = self._derive(salt, n, r, p)
        nonce = os.urandom(_NONCE_BYTES)
        doc: dict[str, Any] = {"format": _FORMAT, "version": _VERSION,
                               "kdf": {"name": "scrypt", "salt": _b64(salt), "n": n, "r": r,
                                       "p": p},
                               "cipher": "AES-256-GCM", "nonce": _b64(nonce)}
        plain = json.dumps({"keys": dict(keys)}, sort_keys=True).encode("utf-8")
        doc["ciphertext"] = _b64(AESGCM(key).encrypt(nonce, plain, _aad(doc)))
        data = (json.dumps(doc, indent=1) + "\n").encode("utf-8")
        _atomic_write(self.path, data)
        self._file_kdf = (salt, n, r, p)

    # ------------------------------------------------------------------ the keyring backend

    def _keyring_call(self, what: str, call: Callable[[Any], Any]) -> Any:
        import keyring
        from keyring.errors import KeyringError

        try:
            return call(keyring.get_keyring())
        except KeyringError as exc:
            raise KeyStoreError(f"system keyring ({type(keyring.get_keyring()).__name__}): "
                                f"cannot {what}: {type(exc).__name__}") from None

    def _keyring_index(self) -> list[str]:
        raw = self._keyring_call("read", lambda kr: kr.get_password(self.service, _INDEX))
        if not raw:
            return []
        try:
            names = json.loads(raw)
        except ValueError:
            raise CorruptKeyStoreError(f"system keyring, service {self.service!r}: the entry "
                                       f"{_INDEX!r} (the list of names) is corrupt") from None
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def _write_index(self, names: list[str]) -> None:
        data = json.dumps(sorted(set(names)))
        self._keyring_call("write", lambda kr: kr.set_password(self.service, _INDEX, data))


def _aad(doc: Mapping[str, Any]) -> bytes:
    """The header authenticated with the ciphertext: format, version and KDF parameters."""
    header = {k: doc[k] for k in ("format", "version", "kdf")}
    return json.dumps(header, sort_keys=True).encode("utf-8")


def _atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` 0600: a temporary file (0600 from its creation), ``fsync``,
    ``os.replace``, then ``fsync`` of the directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _prompt_passphrase() -> str:
    """Ask for the passphrase on the terminal; refuse when there is none."""
    if not sys.stdin.isatty():
        return ""
    import click

    return str(click.prompt("Key store passphrase", hide_input=True, err=True))


def open_keystore(config: Config | None = None, *,
                  passphrase: Callable[[], str] | None = _prompt_passphrase) -> KeyStore:
    """Build the key store the configuration's ``[keystore]`` table describes.

    Args:
        config: the configuration (``Config.load()`` by default). Keys of ``[keystore]``:
            ``backend`` (``"auto"``, ``"keyring"`` or ``"file"``; default ``"auto"``),
            ``path`` (default ``<data_dir>/keystore.json``), ``service`` (default
            ``"flowyard"``), ``scrypt_n`` (default ``2**17``).
        passphrase: asked for the file backend's passphrase when
            ``FLOWYARD_KEYSTORE_PASSPHRASE`` is unset (default: a hidden prompt on a terminal,
            nothing otherwise).

    Returns:
        The key store.

    Raises:
        KeyStoreError: an unknown backend, or ``backend = "keyring"`` and no usable system
            keyring.
    """
    config = config if config is not None else Config.load()
    section = config.section("keystore")
    unknown = set(section) - {"backend", "path", "service", "scrypt_n"}
    if unknown:
        raise KeyStoreError(f"[keystore]: unknown key(s) {', '.join(sorted(unknown))}; known: "
                            "backend, path, scrypt_n, service")
    choice = str(section.get("backend", "auto"))
    if choice not in BACKENDS:
        raise KeyStoreError(f"[keystore] backend must be one of {', '.join(BACKENDS)}, got "
                            f"{choice!r}")
    path = Path(str(section["path"])).expanduser() if section.get("path") else (
        config.data_dir / "keystore.json")
    service = str(section.get("service", "flowyard"))
    scrypt_n = section.get("scrypt_n", SCRYPT_N)
    if choice == "file":
        backend, reason = "file", "backend = \"file\""
    else:
        usable, why = keyring_status()
        if usable is not None:
            backend, reason = "keyring", f"{choice}: {type(usable).__module__}." \
                                         f"{type(usable).__name__}"
        elif choice == "keyring":
            raise KeyStoreError(f"[keystore] backend = \"keyring\" but there is {why}; set "
                                "backend = \"file\" (or \"auto\") to use a passphrase-encrypted "
                                "file")
        else:
            backend, reason = "file", f"auto: {why}"
    return KeyStore(backend, path=path, passphrase=passphrase, service=service,
                    scrypt_n=scrypt_n, reason=reason)


def resolve_secret(value: Any, *, config: Config | None = None,
                   store: KeyStore | None = None, where: str = "", events: Any = None) -> Any:
    """Resolve a secret reference from configuration: ``keystore:<name>`` or ``env:<VAR>``.

    Provider plugins call it on ``api_key`` (and other secret values) when they build a
    provider, so the key store is opened only when a provider is used.

    Args:
        value: a configuration value. ``"keystore:<name>"`` is looked up in the key store,
            ``"env:<VARIABLE>"`` in the environment; anything else (a literal key, None, a
            non-string) is returned unchanged.
        config: the configuration that describes the key store (``Config.load()`` by default).
        store: the key store to use (default: :func:`open_keystore` of ``config``).
        where: what the value configures, for messages (``"[openai] api_key"``).
        events: the stack's event bus (``services.events``); when given, a key read from the
            key store emits ``keystore.used`` with ``{"name", "where"}`` (never the secret),
            which the audit log records as ``key.used``.

    Returns:
        The secret, or ``value`` unchanged when it is not a reference.

    Raises:
        KeyStoreError: the key is not in the key store, the variable is unset or empty, or the
            key store fails (no passphrase, a wrong one, a corrupt file).
    """
    if not isinstance(value, str):
        return value
    label = f"{where}: " if where else ""
    if value.startswith(ENV_PREFIX_REF):
        variable = value[len(ENV_PREFIX_REF):]
        found = os.environ.get(variable)
        if not found:
            raise KeyStoreError(f"{label}{value}: the environment variable {variable} is not "
                                "set")
        return found
    if not value.startswith(KEYSTORE_PREFIX):
        return value
    name = value[len(KEYSTORE_PREFIX):]
    store = store if store is not None else open_keystore(config)
    secret = store.get(name)
    if secret is None:
        raise KeyStoreError(f"{label}{value}: no key named {name!r} in the key store "
                            f"({store.describe()}); add it with `flowyard keys set {name}`")
    if events is not None:
        events.make("keystore.used", name=name, where=where)
    return secret
