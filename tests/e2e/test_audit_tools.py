"""The audit log of a workflow that writes a file (filesystem.write), runs a command
(shell.run) and fetches a URL from a server on 127.0.0.1 (web.fetch), with every plugin
installed and SQLite storage: one record per action with the right resource and outcome, the
chain verifies, and a canary secret in the content, the command's environment, the page and the
URL's query never reaches the audit log."""

from __future__ import annotations

import getpass
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import flowyard_exec  # noqa: F401 - installed in .venv with every distribution
import flowyard_filesystem  # noqa: F401
import flowyard_sql  # noqa: F401
import flowyard_web  # noqa: F401
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from flowyard import Stack, verify_audit
from flowyard.cli import cli

CANARY = "sk-CANARYc4n4ry0123456789secret"


class _Page(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = f"<html><body>the secret is {CANARY}</body></html>".encode()
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def page_url() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/page"
    finally:
        httpd.shutdown()
        thread.join(timeout=5)


def _workflow(url: str) -> dict[str, Any]:
    return {"name": "audited-tools", "steps": [
        {"id": "save", "uses": "filesystem.write",
         "with": {"path": "notes/out.txt", "content": f"content {CANARY}"}},
        {"id": "cmd", "uses": "shell.run",
         "with": {"command": ["sh", "-c", "test -n \"$TOKEN\" && echo ok"],
                  "env": {"TOKEN": CANARY}}},
        {"id": "get", "uses": "web.fetch", "with": {"url": f"{url}?api_key={CANARY}&q=1"}},
        {"id": "bad", "uses": "filesystem.read", "with": {"path": "../outside.txt"},
         "depends_on": ["save"], "on_error": "continue"},
    ]}


def test_a_workflow_s_actions_are_audited_without_secrets(tmp_path: Path, page_url: str
                                                          ) -> None:
    db = tmp_path / "runs.db"
    url = f"sqlite:///{db}"
    config = {"storage": {"url": url}, "filesystem": {"root": str(tmp_path / "ws")},
              "web": {"allow_networks": ["127.0.0.0/8"]}}
    (tmp_path / "ws").mkdir()

    async def main() -> Any:
        async with Stack.default(config=config) as stack:
            result = await stack.run(_workflow(page_url), {})
            assert result.status in ("completed", "partial"), result
            assert (await stack.storage.list_audit()) is not None
            return result

    result = anyio.run(main)

    async def read() -> tuple[list[Any], Any]:
        async with Stack.default(config=config) as stack:
            return (await stack.storage.list_audit(), await verify_audit(stack.storage))

    records, verification = anyio.run(read)
    assert verification.ok and verification.checked == len(records) == 4
    me = f"user:{getpass.getuser()}"
    got = {r.step_id: r for r in records}
    assert all(r.run_id == result.run_id and r.actor == me and r.tenant is None
               for r in records)
    assert (got["save"].action, got["save"].resource, got["save"].outcome) == (
        "file.write", "notes/out.txt", "ok")
    assert got["save"].details["side_effects"] == ["filesystem"]
    assert got["cmd"].action == "command.run" and got["cmd"].outcome == "ok"
    assert got["cmd"].resource == 'sh -c test -n "$TOKEN" && echo ok'
    assert got["get"].action == "url.fetch" and got["get"].outcome == "ok"
    assert got["get"].resource == page_url + "?api_key=***&q=***"
    assert got["bad"].action == "file.read" and got["bad"].outcome == "error"
    assert got["bad"].resource == "../outside.txt" and got["bad"].details["error"]

    exported = CliRunner().invoke(cli, ["audit", "--storage", url, "export"])
    assert exported.exit_code == 0 and len(exported.output.splitlines()) == 4
    listed = CliRunner().invoke(cli, ["audit", "--storage", url, "list"])
    assert "url.fetch" in listed.output and "file.write" in listed.output
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT * FROM fy_audit")).all()
    finally:
        engine.dispose()
    assert len(rows) == 4
    for text in (repr(rows), exported.output, listed.output):
        assert CANARY not in text
        assert "CANARY" not in text
