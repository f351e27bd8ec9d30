"""``flowyard keys``: the key store for provider secrets (set, get, list, delete, rotate).

Secrets are read from a hidden prompt or from standard input, never from a command-line
argument (arguments are visible to every user through ``ps`` and end up in shell history).
The file backend's passphrase comes from ``FLOWYARD_KEYSTORE_PASSPHRASE`` or a hidden prompt;
``rotate``'s new one from ``FLOWYARD_KEYSTORE_NEW_PASSPHRASE`` or a prompt. See docs/keys.md.

The server's API keys, which were ``flowyard keys create|list|revoke`` before the key store,
are ``flowyard api-keys`` (flowyard-server); ``flowyard keys create`` and ``revoke`` say so.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from flowyard.keystore import (
    NEW_PASSPHRASE_ENV,
    PASSPHRASE_ENV,
    KeyStore,
    KeyStoreError,
    mask,
    open_keystore,
)

__all__ = ["keys"]


def _store(*, confirm_new: bool = False) -> KeyStore:
    """Open the configured key store; prompt for the passphrase on a terminal only."""
    holder: dict[str, KeyStore] = {}

    def ask() -> str:
        if not sys.stdin.isatty():
            return ""
        creating = confirm_new and not holder["store"].path.exists()
        prompt = "New key store passphrase" if creating else "Key store passphrase"
        return str(click.prompt(prompt, hide_input=True, confirmation_prompt=creating,
                                err=True))

    store = open_keystore(passphrase=ask)
    holder["store"] = store
    return store


def _fail(exc: KeyStoreError) -> click.ClickException:
    return click.ClickException(str(exc))


@click.group()
def keys() -> None:
    """Manage provider secrets in the key store (docs/keys.md).

    The backend is [keystore] backend in flowyard.toml: "auto" (the system keyring when one
    is usable, else a passphrase-encrypted file), "keyring" or "file". Refer to a key from a
    provider's table with api_key = "keystore:NAME".
    """


@keys.command("set")
@click.argument("name")
@click.option("--stdin", "from_stdin", is_flag=True,
              help="Read the secret from standard input (the default when it is not a "
                   "terminal) instead of a hidden prompt.")
def keys_set(name: str, from_stdin: bool) -> None:
    """Store the secret NAME (asked for hidden, or read from standard input)."""
    if from_stdin or not sys.stdin.isatty():
        value = sys.stdin.readline().rstrip("\r\n")
    else:
        value = str(click.prompt(f"Secret for {name}", hide_input=True, err=True))
    try:
        store = _store(confirm_new=True)
        store.set(name, value)
    except KeyStoreError as exc:
        raise _fail(exc) from None
    click.echo(f"stored {name} ({mask(value)}) in {store.describe()}", err=True)


@keys.command("get")
@click.argument("name")
@click.option("--reveal", is_flag=True, help="Print the secret itself (else a masked form).")
def keys_get(name: str, reveal: bool) -> None:
    """Show the secret NAME masked, or with --reveal the secret itself."""
    try:
        value = _store().get(name)
    except KeyStoreError as exc:
        raise _fail(exc) from None
    if value is None:
        raise click.ClickException(f"no key named {name!r} in the key store")
    click.echo(value if reveal else mask(value))


@keys.command("list")
def keys_list() -> None:
    """List the stored names (never the secrets) after a line naming the backend."""
    try:
        store = _store()
        names = store.list()
    except KeyStoreError as exc:
        raise _fail(exc) from None
    click.echo(f"backend: {store.describe()}")
    for name in names:
        click.echo(name)


@keys.command("delete")
@click.argument("name")
def keys_delete(name: str) -> None:
    """Remove the secret NAME."""
    try:
        found = _store().delete(name)
    except KeyStoreError as exc:
        raise _fail(exc) from None
    if not found:
        raise click.ClickException(f"no key named {name!r} in the key store")
    click.echo(f"deleted {name}", err=True)


@keys.command("rotate")
@click.option("--keep-passphrase", is_flag=True,
              help="Keep the passphrase; only the salt (so the encryption key) changes.")
def keys_rotate(keep_passphrase: bool) -> None:
    """Re-encrypt every key under a new passphrase and salt (file backend), atomically.

    The new passphrase comes from FLOWYARD_KEYSTORE_NEW_PASSPHRASE or a hidden prompt.
    """
    new: str | None = None
    if not keep_passphrase:
        new = os.environ.get(NEW_PASSPHRASE_ENV) or None
        if new is None:
            if not sys.stdin.isatty():
                raise click.ClickException(f"set {NEW_PASSPHRASE_ENV} (or run in a terminal "
                                           "to be asked), or pass --keep-passphrase")
            new = str(click.prompt("New key store passphrase", hide_input=True,
                                   confirmation_prompt=True, err=True))
    try:
        store = _store()
        count = store.rotate(new)
    except KeyStoreError as exc:
        raise _fail(exc) from None
    hint = (f"; set {PASSPHRASE_ENV} to the new passphrase from now on"
            if new is not None and os.environ.get(PASSPHRASE_ENV) else "")
    click.echo(f"re-encrypted {count} key(s) in {store.path}{hint}", err=True)


def _moved(command: str) -> click.Command:
    @click.command(command, hidden=True, add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    def moved(**_: Any) -> None:
        raise click.ClickException(f"`flowyard keys {command}` (the server's API keys) is now "
                                   f"`flowyard api-keys {command}` (flowyard-server)")

    return moved


keys.add_command(_moved("create"))
keys.add_command(_moved("revoke"))
