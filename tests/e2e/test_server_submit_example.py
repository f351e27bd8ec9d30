"""examples/python-docs-qa/submit.py against a real `flowyard serve` (in-process worker, SQLite,
the fake model): it registers a workflow that calls a sub-workflow by a relative path (resolved
against ``FLOWYARD_SERVER__WORKFLOWS_DIR``), submits it with ``-i`` inputs, prints the step
events with their times and the outputs; invalid inputs are refused before anything is queued
(exit status 2).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import flowyard_client  # noqa: F401 - installed in .venv with every distribution
import flowyard_server  # noqa: F401
import flowyard_sql  # noqa: F401

pytestmark = [pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "python-docs-qa" / "submit.py"
MAIN = """\
name: submit-demo
inputs:
  n: {type: integer, default: 1}
steps:
  - id: call
    uses: workflow
    with:
      workflow: sub.yaml
      inputs: {n: "${inputs.n}"}
  - id: ask
    uses: llm.chat
    depends_on: [call]
    with:
      model: fake/echo
      prompt: "say ${call.said}"
outputs:
  said: "${call.said}"
  reply: "${ask}"
"""
SUB = """\
name: sub
inputs:
  n: {type: integer}
steps:
  - id: s
    uses: echo
    with: {value: "n is ${inputs.n}"}
outputs:
  said: "${s}"
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str],
                                                                      Path]]:
    """`flowyard serve` on a free loopback port; (url, environment, workflow directory)."""
    import httpx

    tmp = tmp_path_factory.mktemp("submit")
    flows = tmp / "flows"
    flows.mkdir()
    (flows / "main.yaml").write_text(MAIN)
    (flows / "sub.yaml").write_text(SUB)
    (tmp / "flowyard.toml").write_text("")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "FLOWYARD_CONFIG": str(tmp / "flowyard.toml"),
           "XDG_CONFIG_HOME": str(tmp / "config"), "FLOWYARD_DATA_DIR": str(tmp / "data"),
           "FLOWYARD_STORAGE_URL": f"sqlite:///{tmp / 'service.db'}",
           "FLOWYARD_DEFAULT_MODEL": "fake/echo", "FLOWYARD_PLUGINS": "builtin,server,sql",
           "FLOWYARD_SERVER__WORKFLOWS_DIR": str(flows),
           "FLOWYARD_SERVER__SSE_POLL": "0.05"}
    env.pop("FLOWYARD_API_KEY", None)
    from flowyard import Stack, SupportsTaskQueue

    probe = Stack.default(config={"storage": {"url": env["FLOWYARD_STORAGE_URL"]}})
    assert isinstance(probe.storage, SupportsTaskQueue), "the SQL storage keeps the task queue"
    log = open(tmp / "serve.log", "wb")
    # started elsewhere than the workflows: the relative path must not depend on the cwd
    process = subprocess.Popen([sys.executable, "-c", "from flowyard.cli import main; main()",
                                "serve", "--port", str(port)], env=env, cwd=tmp,
                               stdout=log, stderr=subprocess.STDOUT)
    log.close()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url + "/v1/health/live", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError((tmp / "serve.log").read_text())
            time.sleep(0.1)
        yield url, env, flows
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _submit(url: str, env: dict[str, str], flows: Path, *inputs: str
            ) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(SCRIPT), "--url", url, "--workflow", str(flows / "main.yaml")]
    for pair in inputs:
        args += ["-i", pair]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120,
                          check=False, cwd=ROOT)


def test_submit_script_streams_the_run_and_prints_outputs(
        served: tuple[str, dict[str, str], Path]) -> None:
    done = _submit(*served, "n=2")
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "registered workflow 'submit-demo' (2 steps" in out
    for line in ("> call started (workflow)", "+ call completed in ", "> ask started (llm.chat)",
                 "+ ask completed in ", "run finished: completed", "task completed after"):
        assert line in out, out
    assert "ask says: echo: say n is 2" in out, out  # the token deltas
    # a stream that catches up on a finished run sends each delta after the stored events
    # that happened before it: between the step's start and its end
    lines = out.splitlines()
    says = next(i for i, line in enumerate(lines) if "ask says:" in line)
    assert "> ask started" in "\n".join(lines[:says])
    assert "+ ask completed" in "\n".join(lines[says:])
    outputs = json.loads(out[out.index("\n{\n") + 1:])
    assert outputs["said"] == "n is 2" and outputs["reply"], outputs


def test_submit_script_reports_invalid_inputs(
        served: tuple[str, dict[str, str], Path]) -> None:
    done = _submit(*served, "n=two", "colour=red")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "inputs.n:" in done.stderr and "inputs.colour:" in done.stderr
    assert "submitted task" not in done.stdout
