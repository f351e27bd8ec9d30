"""The key store (issue 22, item 1): real files, real processes, the real ``flowyard`` CLI.

The file backend with a wrong passphrase, a corrupt file, a tampered file, concurrent writer
processes, rotation; the keyring backend through a ``keyring`` backend loaded by ``keyring``'s
own ``PYTHON_KEYRING_BACKEND`` mechanism; the backend choice; ``keystore:``/``env:``
references; and the CLI, whose output never carries a secret unless ``--reveal`` asks.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from flowyard import Config, KeyStore, KeyStoreError, open_keystore, resolve_secret
from flowyard.keystore import CorruptKeyStoreError, WrongPassphraseError, mask

CANARY = "sk-canary-keystore-7d1e9b3a5c2f4086"
PASS = "correct horse battery staple"
#: The fastest scrypt cost the store accepts, to keep the process tests quick.
FAST_N = 2**14

#: A file-backed keyring backend for the keyring tests: a real ``keyring`` backend, loaded by
#: ``keyring`` itself from ``PYTHON_KEYRING_BACKEND`` (no system keyring exists here).
TEST_KEYRING = textwrap.dedent('''
    import json, os
    from keyring.backend import KeyringBackend
    from keyring.errors import PasswordDeleteError

    class FileKeyring(KeyringBackend):
        priority = 1

        def _load(self):
            try:
                with open(os.environ["TEST_KEYRING_FILE"]) as fh:
                    return json.load(fh)
            except FileNotFoundError:
                return {}

        def _save(self, data):
            with open(os.environ["TEST_KEYRING_FILE"], "w") as fh:
                json.dump(data, fh)

        def get_password(self, service, username):
            return self._load().get(service + "/" + username)

        def set_password(self, service, username, password):
            data = self._load()
            data[service + "/" + username] = password
            self._save(data)

        def delete_password(self, service, username):
            data = self._load()
            if data.pop(service + "/" + username, None) is None:
                raise PasswordDeleteError(username)
            self._save(data)
''')


@pytest.fixture
def home(flowyard_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project whose flowyard.toml selects the file backend with the fast scrypt cost."""
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    write_config(tmp_path, backend="file")
    monkeypatch.setenv("FLOWYARD_CONFIG", str(tmp_path / "flowyard.toml"))
    monkeypatch.setenv("FLOWYARD_KEYSTORE_PASSPHRASE", PASS)
    return tmp_path


def write_config(root: Path, *, backend: str) -> None:
    (root / "flowyard.toml").write_text(
        f'[keystore]\nbackend = "{backend}"\npath = "{root / "keys.json"}"\n'
        f"scrypt_n = {FAST_N}\n", encoding="utf-8")


def store() -> KeyStore:
    return open_keystore(passphrase=None)


def flowyard(*args: str, stdin: str = "", env: dict[str, str] | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run the real ``flowyard`` CLI in a new process (stdin a pipe, never a terminal)."""
    return subprocess.run([sys.executable, "-c", "from flowyard.cli import main; main()", *args],
                          input=stdin, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


# ---------------------------------------------------------------------------- the file backend


def test_file_roundtrip_is_encrypted_and_private(home: Path) -> None:
    ks = store()
    ks.set("openai", CANARY)
    ks.set("anthropic", "sk-ant-other")
    assert ks.get("openai") == CANARY and ks.get("missing") is None
    assert ks.list() == ["anthropic", "openai"]
    path = home / "keys.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_bytes()
    assert CANARY.encode() not in raw and b"openai" not in raw and b"sk-ant" not in raw
    doc = json.loads(raw)
    assert doc["kdf"] == {**doc["kdf"], "name": "scrypt", "n": FAST_N, "r": 8, "p": 1}
    assert CANARY not in repr(ks) and CANARY not in ks.describe()
    # a fresh process-like store (new derivation) reads the same keys
    assert store().get("openai") == CANARY
    assert store().delete("anthropic") and not store().delete("anthropic")
    assert store().list() == ["openai"]


def test_the_file_is_never_readable_by_others_not_even_while_written(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    real_replace = os.replace

    def spy(src: str, dst: str) -> None:
        seen.append(stat.S_IMODE(os.stat(src).st_mode))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    old = os.umask(0)
    try:
        store().set("openai", CANARY)
        store().set("other", "v")
    finally:
        os.umask(old)
    assert seen == [0o600, 0o600]
    assert stat.S_IMODE((home / "keys.json").stat().st_mode) == 0o600
    assert [p.name for p in home.iterdir() if p.name.endswith(".tmp")] == []


def test_a_wrong_passphrase_is_a_clear_error_and_changes_nothing(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store().set("openai", CANARY)
    before = (home / "keys.json").read_bytes()
    monkeypatch.setenv("FLOWYARD_KEYSTORE_PASSPHRASE", "not the passphrase")
    for action in (lambda ks: ks.get("openai"), lambda ks: ks.set("x", "y"),
                   lambda ks: ks.delete("openai"), lambda ks: ks.rotate("new")):
        with pytest.raises(WrongPassphraseError, match="wrong passphrase: the authentication "
                           "tag does not match") as info:
            action(store())
        assert str(home / "keys.json") in str(info.value) and CANARY not in str(info.value)
    assert (home / "keys.json").read_bytes() == before
    monkeypatch.setenv("FLOWYARD_KEYSTORE_PASSPHRASE", PASS)
    assert store().get("openai") == CANARY


def test_no_passphrase_at_all_is_an_error_naming_the_variable(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FLOWYARD_KEYSTORE_PASSPHRASE")
    with pytest.raises(KeyStoreError, match="FLOWYARD_KEYSTORE_PASSPHRASE"):
        store().set("openai", CANARY)
    assert not (home / "keys.json").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "bad-base64", "other-version"])
def test_a_corrupt_file_is_an_explicit_error_naming_it_and_is_kept(
        home: Path, damage: str) -> None:
    store().set("openai", CANARY)
    path = home / "keys.json"
    raw = path.read_text()
    doc = json.loads(raw)
    broken = {"garbage": "\x00not json at all",
              "truncated": raw[: len(raw) // 2],
              "bad-base64": json.dumps({**doc, "nonce": "!!!"}),
              "other-version": json.dumps({**doc, "version": 99})}[damage]
    path.write_text(broken)
    with pytest.raises(CorruptKeyStoreError, match="corrupt key-store file") as info:
        store().get("openai")
    assert str(path) in str(info.value)
    with pytest.raises(CorruptKeyStoreError):
        store().set("new", "value")
    assert path.read_text() == broken  # nothing written over it


def test_a_tampered_ciphertext_or_header_fails_authentication(home: Path) -> None:
    store().set("openai", CANARY)
    path = home / "keys.json"
    doc = json.loads(path.read_text())
    raw = bytearray(base64.b64decode(doc["ciphertext"]))
    raw[0] ^= 1
    flipped = {**doc, "ciphertext": base64.b64encode(bytes(raw)).decode()}
    path.write_text(json.dumps(flipped))
    with pytest.raises(WrongPassphraseError):
        store().get("openai")
    # the KDF parameters are authenticated too: a lowered cost is detected, not used
    path.write_text(json.dumps({**doc, "kdf": {**doc["kdf"], "n": FAST_N * 2}}))
    with pytest.raises(WrongPassphraseError):
        store().get("openai")
    path.write_text(json.dumps(doc))
    assert store().get("openai") == CANARY


def test_rotate_re_encrypts_everything_under_a_new_passphrase_and_salt(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ks = store()
    for i in range(5):
        ks.set(f"k{i}", f"value-{i}")
    path = home / "keys.json"
    salt = json.loads(path.read_text())["kdf"]["salt"]
    assert store().rotate("a new passphrase") == 5
    doc = json.loads(path.read_text())
    assert doc["kdf"]["salt"] != salt
    with pytest.raises(WrongPassphraseError):
        store().get("k0")
    monkeypatch.setenv("FLOWYARD_KEYSTORE_PASSPHRASE", "a new passphrase")
    assert {n: store().get(n) for n in store().list()} == {f"k{i}": f"value-{i}"
                                                         for i in range(5)}
    assert store().rotate() == 5  # same passphrase, new salt
    assert json.loads(path.read_text())["kdf"]["salt"] != doc["kdf"]["salt"]
    assert store().get("k4") == "value-4"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_concurrent_writer_processes_lose_no_write(home: Path) -> None:
    code = textwrap.dedent("""
        import sys
        from flowyard import open_keystore
        ks = open_keystore(passphrase=None)
        for i in range(6):
            ks.set(f"{sys.argv[1]}-{i}", f"secret-{sys.argv[1]}-{i}")
    """)
    writers = [subprocess.Popen([sys.executable, "-c", code, tag]) for tag in "abc"]
    clis = [subprocess.Popen([sys.executable, "-c", "from flowyard.cli import main; main()",
                              "keys", "set", f"cli-{i}"], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(3)]
    for i, proc in enumerate(clis):
        _out, err = proc.communicate(f"secret-cli-{i}\n", timeout=120)
        assert proc.returncode == 0, err
    for proc in writers:
        assert proc.wait(timeout=120) == 0
    ks = store()
    expected = {f"{t}-{i}": f"secret-{t}-{i}" for t in "abc" for i in range(6)}
    expected.update({f"cli-{i}": f"secret-cli-{i}" for i in range(3)})
    assert {n: ks.get(n) for n in ks.list()} == expected


# ---------------------------------------------------------------------------- backend choice


def test_auto_falls_back_to_the_file_and_says_so(home: Path) -> None:
    write_config(home, backend="auto")
    ks = store()
    assert ks.backend == "file"
    assert "auto: no usable system keyring (keyring.backends.fail.Keyring)" in ks.describe()
    listed = flowyard("keys", "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].startswith(f"backend: file {home / 'keys.json'}")
    assert "auto: no usable system keyring" in listed.stdout


def test_keyring_configured_without_a_usable_keyring_is_an_error(home: Path) -> None:
    write_config(home, backend="keyring")
    with pytest.raises(KeyStoreError, match='backend = "keyring" but there is no usable '
                       "system keyring"):
        store()
    failed = flowyard("keys", "list")
    assert failed.returncode == 1 and "no usable system keyring" in failed.stderr
    assert not (home / "keys.json").exists()


def test_an_unknown_backend_or_key_is_an_error(home: Path) -> None:
    with pytest.raises(KeyStoreError, match="backend must be one of auto, keyring, file"):
        open_keystore(Config({"keystore": {"backend": "vault"}}))
    with pytest.raises(KeyStoreError, match="unknown key"):
        open_keystore(Config({"keystore": {"passphrase": "x"}}))
    with pytest.raises(KeyStoreError, match="power of 2"):
        open_keystore(Config({"keystore": {"backend": "file", "scrypt_n": 1000}}))


def test_the_keyring_backend_through_a_keyring_loaded_backend(
        home: Path, tmp_path: Path) -> None:
    (tmp_path / "testkeyring.py").write_text(TEST_KEYRING)
    env = {"PYTHONPATH": str(tmp_path), "PYTHON_KEYRING_BACKEND": "testkeyring.FileKeyring",
           "TEST_KEYRING_FILE": str(tmp_path / "keyring.json")}
    for backend in ("keyring", "auto"):
        write_config(home, backend=backend)
        assert flowyard("keys", "set", "openai", stdin=CANARY + "\n", env=env).returncode == 0
        listed = flowyard("keys", "list", env=env)
        assert listed.stdout.splitlines() == [
            f"backend: keyring (service 'flowyard') ({backend}: testkeyring.FileKeyring)",
            "openai"], listed.stderr
        got = flowyard("keys", "get", "openai", "--reveal", env=env)
        assert got.stdout.strip() == CANARY
        assert CANARY not in flowyard("keys", "get", "openai", env=env).stdout
        assert flowyard("keys", "delete", "openai", env=env).returncode == 0
        assert flowyard("keys", "list", env=env).stdout.splitlines()[1:] == []
    rotated = flowyard("keys", "rotate", "--keep-passphrase", env=env)
    assert rotated.returncode == 1 and "file backend only" in rotated.stderr
    assert not (home / "keys.json").exists()  # the keyring was used, never the file


# ---------------------------------------------------------------------------- references


def test_resolve_secret_reads_the_store_and_the_environment(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store().set("openai", CANARY)
    assert resolve_secret("keystore:openai") == CANARY
    assert resolve_secret("sk-literal") == "sk-literal" and resolve_secret(None) is None
    monkeypatch.setenv("MY_KEY", "from-env")
    assert resolve_secret("env:MY_KEY") == "from-env"
    with pytest.raises(KeyStoreError, match=r"\[x\] api_key: keystore:nope: no key named "
                       "'nope' in the key store .*flowyard keys set nope"):
        resolve_secret("keystore:nope", where="[x] api_key")
    with pytest.raises(KeyStoreError, match="UNSET_VAR is not set"):
        resolve_secret("env:UNSET_VAR")


def test_invalid_names_and_empty_values_are_refused(home: Path) -> None:
    for name in ("", "../etc", "a b", "__flowyard_index__"):
        with pytest.raises(KeyStoreError, match="invalid key name"):
            store().set(name, "v")
    with pytest.raises(KeyStoreError, match="non-empty"):
        store().set("ok", "")


# ---------------------------------------------------------------------------- the CLI


def test_cli_set_get_list_delete_rotate_never_print_the_secret_unasked(
        home: Path) -> None:
    outputs: list[str] = []

    def run(*args: str, stdin: str = "", env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        proc = flowyard(*args, stdin=stdin, env=env)
        outputs.append(proc.stdout + proc.stderr)
        return proc

    assert run("keys", "set", "openai", stdin=CANARY + "\n").returncode == 0
    assert stat.S_IMODE((home / "keys.json").stat().st_mode) == 0o600
    got = run("keys", "get", "openai")
    assert got.stdout.strip() == mask(CANARY) == "********4086 (35 characters)"
    listed = run("keys", "list")
    assert listed.stdout.splitlines()[1:] == ["openai"]
    wrong = run("keys", "get", "openai", env={"FLOWYARD_KEYSTORE_PASSPHRASE": "nope"})
    assert wrong.returncode == 1 and "wrong passphrase" in wrong.stderr
    missing = run("keys", "get", "nothing")
    assert missing.returncode == 1 and "no key named 'nothing'" in missing.stderr
    rotated = run("keys", "rotate", env={"FLOWYARD_KEYSTORE_NEW_PASSPHRASE": "pass two"})
    assert rotated.returncode == 0 and "re-encrypted 1 key(s)" in rotated.stderr
    old = run("keys", "get", "openai")
    assert old.returncode == 1 and "wrong passphrase" in old.stderr
    no_new = run("keys", "rotate", env={"FLOWYARD_KEYSTORE_PASSPHRASE": "pass two"})
    assert no_new.returncode == 1 and "FLOWYARD_KEYSTORE_NEW_PASSPHRASE" in no_new.stderr
    assert run("keys", "delete", "openai",
               env={"FLOWYARD_KEYSTORE_PASSPHRASE": "pass two"}).returncode == 0
    for text in outputs:
        assert CANARY not in text and CANARY[:12] not in text, text
    revealed = flowyard("keys", "get", "x", "--reveal")  # (deleted: nothing to reveal)
    assert revealed.returncode == 1
    # the passphrase is never an option
    assert "--passphrase" not in flowyard("keys", "set", "--help").stdout


def test_cli_reveal_prints_the_secret_itself(home: Path) -> None:
    assert flowyard("keys", "set", "openai", stdin=CANARY + "\n").returncode == 0
    assert flowyard("keys", "get", "openai", "--reveal").stdout == CANARY + "\n"


def test_the_server_api_key_commands_moved_to_api_keys(home: Path) -> None:
    moved = flowyard("keys", "create", "--tenant", "acme")
    assert moved.returncode == 1
    assert "`flowyard keys create` (the server's API keys) is now `flowyard api-keys create`" \
        in moved.stderr
    assert "create" not in flowyard("keys", "--help").stdout
