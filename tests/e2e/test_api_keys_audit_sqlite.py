"""`flowyard api-keys create|revoke` leave audit records in a SQLite database (flowyard-sql:
installed in .venv with every distribution, not in flowyard-server's own venv).
"""

from __future__ import annotations

from typing import Any

import flowyard_server  # noqa: F401 - installed in .venv with every distribution
import flowyard_sql  # noqa: F401


def test_api_keys_commands_are_audited(tmp_path: Any) -> None:
    """``flowyard api-keys create`` and ``revoke`` leave ``api_key.created`` and
    ``api_key.revoked`` records (by the OS user), never the key."""
    import getpass
    import json

    from click.testing import CliRunner
    from flowyard.cli import cli

    url = f"sqlite:///{tmp_path / 'runs.db'}"
    created = CliRunner().invoke(cli, ["api-keys", "--storage", url, "create", "--tenant",
                                       "acme", "--name", "ci"])
    assert created.exit_code == 0, created.output
    key = created.output.strip().splitlines()[-1]
    key_id = key.split("_")[1]
    revoked = CliRunner().invoke(cli, ["api-keys", "--storage", url, "revoke", key_id])
    assert revoked.exit_code == 0, revoked.output
    listed = CliRunner().invoke(cli, ["audit", "--storage", url, "list", "--json"])
    records = [json.loads(line) for line in listed.output.splitlines()]
    assert [(r["action"], r["resource"], r["actor"], r["tenant"]) for r in records] == [
        ("api_key.created", f"api_key:{key_id}", f"user:{getpass.getuser()}", "acme"),
        ("api_key.revoked", f"api_key:{key_id}", f"user:{getpass.getuser()}", "acme")]
    assert records[0]["details"] == {"name": "ci"}
    assert key not in listed.output and key.split("_", 2)[2] not in listed.output
    verified = CliRunner().invoke(cli, ["audit", "--storage", url, "verify"])
    assert verified.exit_code == 0 and "ok: 2 record(s)" in verified.output
