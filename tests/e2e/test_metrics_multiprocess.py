"""Prometheus metrics across processes (docs/metrics.md): a real ``flowyard serve`` on
127.0.0.1 with two ``flowyard worker`` processes sharing ``[metrics] multiprocess_dir``; its
``/metrics`` and ``flowyard metrics serve`` are scraped and parsed with
``prometheus_client.parser`` and hold the sums of both workers' runs, tokens and cost.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import flowyard_server  # noqa: F401 - installed in .venv with every distribution
import flowyard_sql  # noqa: F401

CLI = [sys.executable, "-c", "from flowyard.cli import main; main()"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Service:
    """The processes of the service (``flowyard serve`` and its workers) on a SQLite file."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_dir = tmp / "metrics"
        (tmp / "flowyard.toml").write_text(
            f'[metrics]\nmultiprocess_dir = "{self.metrics_dir}"\n')
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
            "FLOWYARD_CONFIG": str(tmp / "flowyard.toml"),
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "FLOWYARD_DATA_DIR": str(tmp / "data"),
            "FLOWYARD_STORAGE_URL": f"sqlite:///{tmp / 'service.db'}",
            "FLOWYARD_DEFAULT_MODEL": "fake/echo",
            "FLOWYARD_PLUGINS": "builtin,server,sql",
            "FLOWYARD_SERVER__POLL_INTERVAL": "0.2",
            "FLOWYARD_SERVER__KEY_CACHE_SECONDS": "0.5",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.keys: dict[str, str] = {}

    def command(self, *args: str) -> str:
        done = subprocess.run([*CLI, *args], env=self.env, capture_output=True, timeout=60,
                              check=False)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    def start(self, *args: str, name: str) -> subprocess.Popen[bytes]:
        log = open(self.tmp / f"{name}.log", "wb")
        process = subprocess.Popen([*CLI, *args], env=self.env, stdout=log,
                                   stderr=subprocess.STDOUT)
        log.close()
        self.processes.append(process)
        return process

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

PRICED = """\
name: priced
inputs:
  who: {type: string, default: world}
steps:
  - id: nap
    uses: sleep
    with: {seconds: 0.5}
  - id: ask
    uses: llm.chat
    depends_on: [nap]
    with: {prompt: "Say hello to {{ inputs.who }}", model: fake/priced}
outputs:
  answer: "${ask}"
"""

TASKS = 4


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def wait_http(url: str, process: subprocess.Popen[bytes], log: Any, **kwargs: Any) -> Any:
    import httpx

    deadline = time.monotonic() + 60
    while True:
        try:
            response = httpx.get(url, timeout=2, **kwargs)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"{url} did not answer:\n{log()}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    tmp = tmp_path_factory.mktemp("metrics")
    svc = Service(tmp)
    svc.keys = {"e2e": svc.command("api-keys", "create", "--tenant", "e2e"
                                   ).strip().splitlines()[-1]}
    serve = svc.start("serve", "--port", str(svc.port), "--no-worker", name="serve")
    for name in ("worker-a", "worker-b"):
        svc.start("worker", "--concurrency", "1", "--name", name, name=name)
    wait_http(svc.url + "/v1/health/live", serve, lambda: svc.log("serve"))
    try:
        yield svc
    finally:
        for process in svc.processes:
            if process.poll() is None:
                process.terminate()
        for process in svc.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_two_workers_runs_are_summed_on_both_metrics_endpoints(service: Any) -> None:
    import httpx
    from flowyard_client import AsyncClient

    async with AsyncClient(service.url, service.keys["e2e"]) as fy:
        await fy.workflows.register(PRICED)
        tasks = [await fy.tasks.submit(target="priced", inputs={"who": f"w{i}"})
                 for i in range(TASKS)]
        done = [await fy.tasks.wait_for_completion(t, timeout=90) for t in tasks]
        assert [d.status for d in done] == ["completed"] * TASKS, [d.error for d in done]
        runs = [await fy.runs.get(t.run_id) for t in tasks]
    # each worker takes one task at a time and every task sleeps: both ran some
    files = sorted(p.name for p in Path(service.metrics_dir).glob("*.db"))
    pids = {int(m.group(1)) for name in files if (m := re.search(r"_(\d+)\.db$", name))}
    worker_pids = {p.pid for p in service.processes[1:]}
    assert worker_pids <= pids, (files, worker_pids)

    cost = sum(r.cost_usd or 0.0 for r in runs)
    tokens_in = sum(r.input_tokens for r in runs)
    tokens_out = sum(r.output_tokens for r in runs)
    assert cost > 0 and tokens_in > 0 and tokens_out > 0

    def check(text: str) -> None:
        got = parse(text)
        assert got[("flowyard_runs_total", (("status", "completed"),
                                            ("workflow", "priced")))] == TASKS
        assert got[("flowyard_steps_total", (("status", "completed"),
                                             ("workflow", "priced")))] == 2 * TASKS
        assert got[("flowyard_step_duration_seconds_count",
                    (("status", "completed"), ("workflow", "priced")))] == 2 * TASKS
        model = (("model", "priced"), ("provider", "fake"))
        assert got[("flowyard_model_cost_usd_total", model)] == pytest.approx(cost)
        assert got[("flowyard_model_tokens_total", (("kind", "input"), *model))] == tokens_in
        assert got[("flowyard_model_tokens_total", (("kind", "output"), *model))] == \
            tokens_out
        assert got[("flowyard_model_call_duration_seconds_count",
                    (model[0], ("outcome", "ok"), model[1]))] == TASKS
        for run in runs:  # bounded labels: never a run id
            assert run.id not in text
        assert "nap" not in text

    scraped = httpx.get(service.url + "/metrics", timeout=10,
                        headers={"Authorization": f"Bearer {service.keys['e2e']}"})
    assert scraped.status_code == 200
    check(scraped.text)
    got = parse(scraped.text)
    assert got[("flowyard_queue_tasks", (("status", "queued"),))] == 0
    assert got[("flowyard_queue_oldest_age_seconds", ())] == 0
    assert ("flowyard_server_http_requests_total", (("code", "200"), ("method", "GET"))) in got

    port = _free_port()
    log = open(service.tmp / "metrics-serve.log", "wb")
    served = subprocess.Popen([*CLI, "metrics", "serve", "--port", str(port)], env=service.env,
                              stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        response = wait_http(f"http://127.0.0.1:{port}/metrics", served,
                             lambda: (service.tmp / "metrics-serve.log").read_text())
        check(response.text)
    finally:
        served.terminate()
        served.wait(timeout=10)


def test_cli_runs_in_separate_processes_are_summed_by_metrics_show(tmp_path: Path) -> None:
    """A CLI-only user: two ``flowyard run`` processes, then ``flowyard metrics show``."""
    svc = Service(tmp_path)
    svc.env["FLOWYARD_STORAGE_URL"] = f"sqlite:///{tmp_path / 'runs.db'}"
    (tmp_path / "wf.yaml").write_text(PRICED.replace("seconds: 0.5", "seconds: 0"))
    runs = [subprocess.Popen([*CLI, "run", str(tmp_path / "wf.yaml"), "--no-live"],
                             env=svc.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for _ in range(2)]
    for process in runs:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0, out.decode()
    pids = {int(m.group(1)) for p in svc.metrics_dir.glob("*.db")
            if (m := re.search(r"_(\d+)\.db$", p.name))}
    assert {p.pid for p in runs} <= pids
    got = parse(svc.command("metrics", "show"))
    assert got[("flowyard_runs_total", (("status", "completed"), ("workflow", "priced")))] == 2
    assert got[("flowyard_model_calls_total", (("model", "priced"), ("outcome", "ok"),
                                               ("provider", "fake")))] == 2
    assert got[("flowyard_model_cost_usd_total", (("model", "priced"),
                                                  ("provider", "fake")))] > 0
