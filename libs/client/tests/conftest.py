"""Test configuration of flowyard-client: a real uvicorn server playing flowyard's service.

The server (:data:`app`, Starlette) answers the routes of ``flowyard_client.models`` from
memory and misbehaves on purpose, chosen by the ids the tests use (each test passes a fresh
token in them, so the asyncio and trio runs of a test never share state):

* ``GET /v1/agents/status-<code>``: the typed error body of that status (``X-Request-ID``
  set; a 429 with ``Retry-After: 3600``);
* ``GET /v1/tasks/flaky-<token>``: 503 twice, then the task; ``gateway-<token>``: 502 always;
  ``rl-<token>``: 429 with ``Retry-After: 1`` once, then the task; ``slow-<token>``: answers
  after 1 s; ``trickle-<token>``: a 200 whose body trickles one byte every 0.1 s;
  ``garbage-<token>``: a 500 with an HTML body;
* ``POST /v1/tasks`` with ``target="flaky"``: 503 twice per name, then the task (idempotency
  keys honoured: the same key gives the same task, with 200);
* ``GET /v1/runs/<scenario>-<token>/events``: SSE streams that drop the connection midway
  (``drop``), replay events already sent (``replay``), go silent (``silent``) or end early
  (``early``), or answer 503 every time (``down``); every connection's ``Last-Event-ID`` is
  recorded;
* a wrong API key gets a 401 whose message and details echo it; ``GET /v1/agents/echo-key``
  echoes the right one in a 400.

The server runs once per test session in a thread, on a free port of 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import uvicorn
from flowyard_client.models import (
    Agent,
    AgentCreate,
    AgentUpdate,
    Task,
    TaskBatch,
    TaskSubmit,
    WorkflowSource,
)
from pydantic import ValidationError as PydanticValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

#: The API key the server accepts; a canary: it must never show up in an error or a repr.
API_KEY = "sk-canary-7f3a9c2e5b1d4806a9e2"

CODES = {400: "validation_error", 401: "authentication_error", 403: "forbidden",
         404: "not_found", 409: "conflict", 413: "payload_too_large", 422: "validation_error",
         429: "rate_limited", 500: "server_error", 502: "bad_gateway", 503: "unavailable",
         504: "gateway_timeout"}


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


class State:
    """What the server holds and what it saw."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.agents: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}
        self.keys: dict[str, str] = {}
        self.hits: defaultdict[str, int] = defaultdict(int)
        self.last_event_ids: defaultdict[str, list[str | None]] = defaultdict(list)
        self.workflows: dict[str, dict[str, Any]] = {}
        self.health_down = False

    def hit(self, key: str) -> int:
        """Count one request for ``key``; return the count including it."""
        with self.lock:
            self.hits[key] += 1
            return self.hits[key]


STATE = State()


def error(status: int, message: str, details: Any = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"code": CODES.get(status, "error"), "message": message, "details": details}
    return JSONResponse(body, status_code=status,
                        headers={"X-Request-ID": f"req-{status}", **(headers or {})})


def authorised(request: Request) -> Response | None:
    header = request.headers.get("authorization", "")
    token = header.removeprefix("Bearer ").strip()
    if token == API_KEY:
        return None
    return error(401, f"invalid API key {token!r}", {"received": header, "key": token})


def new_task(submit: TaskSubmit) -> dict[str, Any]:
    ident = uuid.uuid4().hex
    task = Task(id=ident, kind=submit.kind, target=submit.target, name=submit.name,
                inputs=submit.inputs, priority=submit.priority, status="queued",
                run_id=f"run{ident}", idempotency_key=submit.idempotency_key,
                created_at=time.time(), metadata=submit.metadata)
    return {"task": task.model_dump(mode="json"), "polls": 0}


def advance(entry: dict[str, Any]) -> dict[str, Any]:
    """One poll of a task: queued -> running -> completed (``inputs.polls`` polls), failed
    for target ``boom``, running forever for target ``never``."""
    task = entry["task"]
    entry["polls"] += 1
    if task["status"] in ("completed", "failed", "cancelled"):
        return task
    if task["target"] == "never":
        task["status"] = "running"
    elif entry["polls"] >= int(task["inputs"].get("polls", 1)):
        task["status"] = "failed" if task["target"] == "boom" else "completed"
        task["finished_at"] = time.time()
        task["outputs"] = {"echo": task["inputs"]} if task["status"] == "completed" else {}
        task["error"] = "boom" if task["status"] == "failed" else None
    else:
        task["status"] = "running"
    return task


async def health(request: Request) -> Response:
    if request.url.path.endswith("/ready") and STATE.health_down:
        return JSONResponse({"status": "DOWN", "version": "t", "checks": {
            "storage": {"status": "DOWN", "detail": "unreachable", "duration_ms": 1.5}}},
            status_code=503)
    return JSONResponse({"status": "UP", "version": "t", "checks": {
        "storage": {"status": "UP", "detail": "memory", "duration_ms": 0.1}}})


async def metrics(request: Request) -> Response:
    return PlainTextResponse("# TYPE flowyard_tasks_total counter\nflowyard_tasks_total 3\n",
                             media_type="text/plain; version=0.0.4")


async def agents(request: Request) -> Response:
    if denied := authorised(request):
        return denied
    if request.method == "POST":
        try:
            create = AgentCreate.model_validate_json(await request.body())
        except PydanticValidationError as exc:
            return error(422, "invalid agent", exc.errors(include_url=False, include_input=False,
                                                          include_context=False))
        now = time.time()
        agent = Agent(id=uuid.uuid4().hex, created_at=now, updated_at=now,
                      **create.model_dump())
        STATE.agents[agent.id] = agent.model_dump(mode="json")
        return JSONResponse(STATE.agents[agent.id], status_code=201)
    limit = int(request.query_params.get("limit", 50))
    after = request.query_params.get("after") or ""
    ids = sorted(i for i in STATE.agents if i > after)
    page = ids[:limit]
    return JSONResponse({"items": [STATE.agents[i] for i in page],
                         "next_after": page[-1] if len(ids) > limit else None})


async def agent(request: Request) -> Response:
    ident = request.path_params["agent_id"]
    if ident.startswith("status-"):
        status = int(ident.split("-")[1])
        headers = {"Retry-After": "3600"} if status == 429 else None
        return error(status, f"scripted {status}", {"field": "name", "status": status}, headers)
    if denied := authorised(request):
        return denied
    if ident == "echo-key":
        return error(400, f"your key is {API_KEY}", {"key": API_KEY, "nested": [API_KEY]})
    if ident not in STATE.agents:
        return error(404, f"no agent {ident}")
    stored = STATE.agents[ident]
    if request.method == "DELETE":
        del STATE.agents[ident]
        return Response(status_code=204)
    if request.method == "PATCH":
        try:
            update = AgentUpdate.model_validate_json(await request.body())
        except PydanticValidationError as exc:
            return error(422, "invalid update", exc.errors(include_url=False,
                                                           include_input=False,
                                                           include_context=False))
        stored.update(update.model_dump(exclude_unset=True))
        stored["updated_at"] = time.time()
    if request.url.path.endswith("/capabilities"):
        return JSONResponse(stored["capabilities"])
    return JSONResponse(stored)


async def tasks(request: Request) -> Response:
    if denied := authorised(request):
        return denied
    if request.method == "GET":
        items = [e["task"] for e in reversed(STATE.tasks.values())]
        for field in ("status", "kind", "target"):
            if value := request.query_params.get(field):
                items = [t for t in items if t[field] == value]
        limit = int(request.query_params.get("limit", 50))
        offset = int(request.query_params.get("offset", 0))
        return JSONResponse({"items": items[offset:offset + limit], "limit": limit,
                             "offset": offset})
    raw = await request.body()
    if len(raw) > 10_000:
        return error(413, f"body of {len(raw)} bytes is over 10000")
    try:
        submit = TaskSubmit.model_validate_json(raw)
    except PydanticValidationError as exc:
        return error(422, "invalid task", exc.errors(include_url=False, include_input=False,
                                                     include_context=False))
    if submit.target == "flaky" and STATE.hit(f"submit:{submit.name}") <= 2:
        return error(503, "queue busy")
    if submit.idempotency_key and submit.idempotency_key in STATE.keys:
        return JSONResponse(STATE.tasks[STATE.keys[submit.idempotency_key]]["task"])
    entry = new_task(submit)
    STATE.tasks[entry["task"]["id"]] = entry
    if submit.idempotency_key:
        STATE.keys[submit.idempotency_key] = entry["task"]["id"]
    return JSONResponse(entry["task"], status_code=201)


async def batch(request: Request) -> Response:
    if denied := authorised(request):
        return denied
    try:
        submitted = TaskBatch.model_validate_json(await request.body())
    except PydanticValidationError as exc:
        return error(422, "invalid batch", exc.errors(include_url=False, include_input=False,
                                                      include_context=False))
    out = []
    for submit in submitted.tasks:
        entry = new_task(submit)
        STATE.tasks[entry["task"]["id"]] = entry
        out.append(entry["task"])
    return JSONResponse(out)


async def trickle(task: dict[str, Any]) -> AsyncIterator[bytes]:
    for byte in json.dumps(task).encode():
        yield bytes([byte])
        await asyncio.sleep(0.1)


async def task(request: Request) -> Response:
    if denied := authorised(request):
        return denied
    ident = request.path_params["task_id"]
    count = STATE.hit(f"{request.method}:{request.url.path}")
    scripted = new_task(TaskSubmit(target="scripted"))["task"] | {"id": ident}
    scenario = ident.split("-")[0]
    if scenario == "flaky":
        return error(503, "try again") if count <= 2 else JSONResponse(scripted)
    if scenario == "gateway":
        return error(502, "upstream down")
    if scenario == "rl":
        if count == 1:
            return error(429, "slow down", headers={"Retry-After": "1"})
        return JSONResponse(scripted)
    if scenario == "slow":
        await asyncio.sleep(1.0)
        return JSONResponse(scripted)
    if scenario == "trickle":
        return StreamingResponse(trickle(scripted), media_type="application/json")
    if scenario == "garbage":
        return Response("<html><body>Internal error</body></html>", status_code=500,
                        media_type="text/html")
    if scenario == "badjson":
        return JSONResponse({"id": ident})  # not a Task
    entry = STATE.tasks.get(ident)
    if entry is None:
        return error(404, f"no task {ident}")
    action = request.url.path.rsplit("/", 1)[-1]
    if action == "cancel":
        if entry["task"]["status"] in ("completed", "failed", "cancelled"):
            return error(409, f"task {ident} already {entry['task']['status']}")
        entry["task"]["status"] = "cancelled"
        return JSONResponse(entry["task"])
    if action == "retry":
        if entry["task"]["status"] not in ("failed", "cancelled"):
            return error(409, f"task {ident} is {entry['task']['status']}")
        entry["task"].update(status="queued", attempts=entry["task"]["attempts"] + 1)
        entry["polls"] = 0
        return JSONResponse(entry["task"])
    return JSONResponse(advance(entry))


def run_json(ident: str) -> dict[str, Any]:
    return {"id": ident, "workflow_name": "wf", "status": "completed", "created_at": 1.0,
            "started_at": 1.0, "finished_at": 2.0, "input_tokens": 10, "output_tokens": 5,
            "cost_usd": 0.001, "task_id": None}


async def runs(request: Request) -> Response:
    if denied := authorised(request):
        return denied
    return JSONResponse({"items": [run_json("r1"), run_json("r2")],
                         "limit": int(request.query_params.get("limit", 50)),
                         "offset": int(request.query_params.get("offset", 0))})


async def run(request: Request) -> Response:
    if denied := authorised(request):
        return denied
    ident = request.path_params["run_id"]
    if ident.startswith("missing"):
        return error(404, f"no run {ident}")
    what = request.url.path.rsplit("/", 1)[-1]
    if what == "steps":
        return JSONResponse([{"step_id": "a", "step_key": "a", "attempt": 1,
                              "status": "completed", "started_at": 1.0, "finished_at": 1.5,
                              "output": {"text": "hi"}}])
    if what == "logs":
        return JSONResponse([{"time": 1.0, "level": "info", "message": "started"}])
    if what == "cost":
        return JSONResponse([{"provider": "mock", "model": "m", "input_tokens": 10,
                              "output_tokens": 5, "cost_usd": None}])
    if what == "resume":
        if ident.startswith("flaky") and STATE.hit(f"resume:{ident}") <= 2:
            return error(503, "busy")
        return JSONResponse(new_task(TaskSubmit(target="wf"))["task"] | {"run_id": ident})
    return JSONResponse(run_json(ident))


#: The durable events of every scripted run: seq 1..8, then run.finished (seq 9); a
#: transient step.delta (seq 0) follows seq 2.
LAST_SEQ = 9


def sse(run_id: str, seq: int) -> bytes:
    kind = "run.finished" if seq == LAST_SEQ else ("run.started" if seq == 1 else "step.done")
    body = {"seq": seq, "type": kind, "run_id": run_id, "step_id": f"s{seq}",
            "time": 1000.0 + seq, "data": {"n": seq}}
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(body)}\n\n".encode()


def delta(run_id: str) -> bytes:
    body = {"seq": 0, "type": "step.delta", "run_id": run_id, "step_id": "s2", "time": 1002.5,
            "data": {"text": "tok"}}
    return f"event: step.delta\ndata: {json.dumps(body)}\n\n".encode()


async def events(request: Request) -> Response:
    if denied := authorised(request):
        return denied
    run_id = request.path_params["run_id"]
    if run_id.startswith("missing"):
        return error(404, f"no run {run_id}")
    header = request.headers.get("last-event-id")
    STATE.last_event_ids[run_id].append(header)
    if run_id.startswith("down-"):
        return error(503, "event log unavailable")
    connection = len(STATE.last_event_ids[run_id])
    after = int(header) if header else 0
    scenario = run_id.split("-")[0]
    if scenario == "replay" and connection > 1:
        after = max(0, after - 2)  # a server replaying two events already sent

    async def stream() -> AsyncIterator[bytes]:
        yield b": connected\n\n"
        for seq in range(after + 1, LAST_SEQ + 1):
            if connection == 1 and seq == 5:
                if scenario in ("drop", "replay"):
                    raise ConnectionResetError("dropped on purpose")
                if scenario == "silent":
                    await asyncio.sleep(5)
                if scenario == "early":
                    return
            yield sse(run_id, seq)
            if seq == 2:
                yield delta(run_id)
            await asyncio.sleep(0.01)

    return StreamingResponse(stream(), media_type="text/event-stream")


async def workflows(request: Request) -> Response:
    if denied := authorised(request):
        return denied
    if request.method == "GET":
        return JSONResponse(list(STATE.workflows.values()))
    source = WorkflowSource.model_validate_json(await request.body())
    text = source.source or json.dumps(source.definition)
    valid = "steps" in text
    name = (source.definition or {}).get("name") or "from-text"
    if request.url.path.endswith("/validate"):
        issues = [] if valid else [{"message": "no steps", "path": "steps", "line": 1}]
        return JSONResponse({"valid": valid, "issues": issues, "name": name})
    if not valid:
        return error(422, "invalid workflow", [{"message": "no steps", "path": "steps"}])
    info = {"name": name, "steps": 1, "content_hash": "abc", "registered_at": time.time()}
    STATE.workflows[name] = info
    return JSONResponse(info)


async def catalogue(request: Request) -> Response:
    if denied := authorised(request):
        return denied
    what = request.url.path.rsplit("/", 1)[-1]
    if what == "providers":
        return JSONResponse([{"name": "mock", "models": ["m"]}])
    if what == "models":
        return JSONResponse([{"ref": "mock:m", "provider": "mock", "model": "m",
                              "input_usd_per_mtok": 1.0, "output_usd_per_mtok": 2.0}])
    return JSONResponse([{"name": "echo", "idempotent": True}])


app = Starlette(routes=[
    Route("/v1/health/live", health),
    Route("/v1/health/ready", health),
    Route("/metrics", metrics),
    Route("/v1/agents", agents, methods=["GET", "POST"]),
    Route("/v1/agents/{agent_id}", agent, methods=["GET", "PATCH", "DELETE"]),
    Route("/v1/agents/{agent_id}/capabilities", agent),
    Route("/v1/tasks", tasks, methods=["GET", "POST"]),
    Route("/v1/tasks/batch", batch, methods=["POST"]),
    Route("/v1/tasks/{task_id}", task),
    Route("/v1/tasks/{task_id}/cancel", task, methods=["POST"]),
    Route("/v1/tasks/{task_id}/retry", task, methods=["POST"]),
    Route("/v1/runs", runs),
    Route("/v1/runs/{run_id}", run),
    Route("/v1/runs/{run_id}/steps", run),
    Route("/v1/runs/{run_id}/logs", run),
    Route("/v1/runs/{run_id}/cost", run),
    Route("/v1/runs/{run_id}/resume", run, methods=["POST"]),
    Route("/v1/runs/{run_id}/events", events),
    Route("/v1/workflows", workflows, methods=["GET", "POST"]),
    Route("/v1/workflows/validate", workflows, methods=["POST"]),
    Route("/v1/providers", catalogue),
    Route("/v1/models", catalogue),
    Route("/v1/tools", catalogue),
])


class Server:
    """The uvicorn server in a thread; ``base_url`` is where it listens."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.base_url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        config = uvicorn.Config(app, log_level="critical", access_log=False, lifespan="off",
                                loop="asyncio", http="h11", timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        self.state = STATE
        self.api_key = API_KEY
        self.last_seq = LAST_SEQ

    def close(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """The test server, started once per session."""
    instance = Server()
    yield instance
    instance.close()


@pytest.fixture
def token() -> str:
    """A fresh token for scenario ids, so no two tests (or backends) share server state."""
    return uuid.uuid4().hex[:12]
