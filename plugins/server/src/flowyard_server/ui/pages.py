"""The dashboard's pages under ``/ui``: server-rendered Jinja2 templates (autoescaped), htmx
for partial updates, and one small script for the live run view.

Why this shape: the pages are plain HTML from the server, so there is no build step and no
JavaScript framework to keep up to date; every user-supplied string passes Jinja2's
autoescaping, and the strict Content-Security-Policy sent with every page (no inline scripts,
no inline styles, nothing from other origins) makes an escaping mistake inert. htmx 2.0.11
(vendored as a static file, BSD-0 licence) refreshes the runs list; ``run.js`` follows a run's
Server-Sent Events and updates the DAG drawn as SVG on the server (:mod:`.dag`).

Every page needs a browser session (:mod:`.session`, checked by the security middleware
before the route runs) and shows only the session's tenant's agents, tasks and runs; another
tenant's run id is a 404 page, as in the API. Forms that change something carry the
session's CSRF token.
"""

from __future__ import annotations

import collections
import hmac
import json
import secrets
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from flowyard import (
    TaskQuery,
    json_default,
    parse_workflow,
    step_dependencies,
)
from sse_starlette import EventSourceResponse

from flowyard_server.live import follow_run
from flowyard_server.ui.session import LOGIN_COOKIE, SESSION_COOKIE, Session, Sessions

if TYPE_CHECKING:
    from flowyard_server.app import Service

__all__ = ["ui_router", "CONTENT_SECURITY_POLICY", "PAGE_SIZE", "STATIC_DIR",
           "CompressPages"]

#: The Content-Security-Policy of every dashboard response.
CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; "
                           "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                           "base-uri 'none'; form-action 'self'")
#: Rows per page of the runs and tasks lists.
PAGE_SIZE = 50
#: The directory of the vendored static files.
STATIC_DIR = Path(__file__).parent / "static"
_TEMPLATES = Path(__file__).parent / "templates"
_TASK_STATUSES = ("queued", "running", "completed", "failed", "cancelled")
_ENDED_TASK = frozenset({"completed", "failed", "cancelled"})
_NAV = (("/ui/runs", "Runs"), ("/ui/tasks", "Tasks"), ("/ui/agents", "Agents"),
        ("/ui/costs", "Costs"), ("/ui/providers", "Providers"))
_SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-store",
}
#: Most events shown on a run page when it loads (the live stream adds the new ones).
_EVENTS_SHOWN = 300
#: Most runs scanned for a run's sub-runs (created while it ran).
_SUB_RUN_SCAN = 5000


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(_TEMPLATES)),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["when"] = _when
    env.filters["duration"] = _duration
    env.filters["usd"] = _usd
    env.filters["tojson_pretty"] = lambda v: json.dumps(v, indent=2, default=json_default,
                                                        ensure_ascii=False)
    return env


def _when(seconds: float | None) -> str:
    """UNIX seconds as ``YYYY-MM-DD HH:MM:SS`` UTC ("" for None)."""
    if not seconds:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(seconds))


def _duration(seconds: float | None) -> str:
    """Seconds as ``0.42 s`` / ``3 min 5 s`` / ``2 h 4 min`` ("" for None)."""
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.2f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def _usd(value: float | None) -> str:
    """US dollars with enough digits for one model call ($0.000032), "" for None."""
    if value is None:
        return ""
    if value == 0:
        return "$0"
    if value < 0.01:
        return f"${value:.6f}".rstrip("0")
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def _with_headers(response: Response) -> Response:
    for name, value in _SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def _page_number(text: str | None) -> int:
    try:
        page = int(text or "1")
    except ValueError:
        return 1
    return min(max(page, 1), 10_000 // PAGE_SIZE)


def _text_param(request: Request, name: str, limit: int = 200) -> str:
    """A query parameter as text (at most ``limit`` characters; "" when missing)."""
    return (request.query_params.get(name) or "")[:limit].strip()


class CompressPages:
    """ASGI wrapper that gzips the dashboard's responses (``/ui/...``; a 1,000-step run page
    is about 1 MB of HTML and SVG, a tenth of it compressed) and leaves the API alone (its
    small JSON bodies would only pay the compression's CPU). Event streams are never
    compressed (Starlette's ``GZipMiddleware`` excludes ``text/event-stream``).

    Args:
        app: the ASGI application behind it.
        minimum_size: smallest body compressed, in bytes.
    """

    def __init__(self, app: Any, minimum_size: int = 1024) -> None:
        from starlette.middleware.gzip import GZipMiddleware

        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=minimum_size)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        """Handle one ASGI connection."""
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path.startswith("/ui/"):
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def ui_router(svc: Service) -> APIRouter:
    """Build the router of the dashboard's pages (mounted under ``/ui``).

    Args:
        svc: the server's shared :class:`~flowyard_server.app.Service`.

    Returns:
        the router (its routes are left out of the OpenAPI schema).
    """
    from flowyard_server.app import RUNS_NAMESPACE, ApiError
    from flowyard_server.ui.dag import DagNode, render_dag_svg
    from flowyard_server.worker import AGENTS_NAMESPACE, WORKFLOWS_NAMESPACE, task_workflow

    router = APIRouter(prefix="/ui", include_in_schema=False)
    env = _environment()
    sessions: Sessions = svc.sessions
    stack = svc.stack

    def session_of(request: Request) -> Session:
        return request.scope["state"]["session"]  # set by the security middleware

    def render(request: Request, name: str, http_status: int = 200, **context: Any
               ) -> Response:
        session = request.scope.get("state", {}).get("session")
        page = env.get_template(name).render(session=session, nav=_NAV,
                                             active=context.pop("active", ""),
                                             flash=request.query_params.get("flash", "")[:200],
                                             **context)
        return _with_headers(HTMLResponse(page, status_code=http_status))

    def not_found(request: Request, what: str) -> Response:
        return render(request, "error.html", http_status=404, status_text="Not found",
                      message=f"There is no {what} with that id.")

    async def form_of(request: Request) -> dict[str, str]:
        body = (await request.body()).decode("utf-8", "replace")
        return {k: v[0] for k, v in urllib.parse.parse_qs(body, max_num_fields=20).items()}

    def csrf_checked(request: Request, form: dict[str, str]) -> bool:
        token = form.get("csrf") or request.headers.get("x-csrf-token")
        return Sessions.csrf_ok(session_of(request), token)

    def back_to(path: str, flash: str) -> Response:
        return _with_headers(RedirectResponse(
            f"{path}?{urllib.parse.urlencode({'flash': flash})}", status_code=303))

    # ------------------------------------------------------------------ login

    @router.get("")
    @router.get("/")
    async def home() -> Response:
        return _with_headers(RedirectResponse("/ui/runs", status_code=303))

    @router.get("/login")
    async def login_page(request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        response = render(request, "login.html", login_csrf=token, error="")
        response.headers.append("set-cookie", Sessions.cookie_header(
            token, secure=request.url.scheme == "https", max_age=1800, name=LOGIN_COOKIE))
        return response

    @router.post("/login")
    async def login(request: Request) -> Response:
        form = await form_of(request)
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(expected.encode(),
                                                   form.get("csrf", "").encode()):
            return await _login_failed(request, "The login form expired; try again.", 400)
        found = await svc.keys.identify(form.get("api_key", "").strip())
        if found is None:
            return await _login_failed(request, "That API key is not valid.", 401)
        tenant, key_id = found
        value, _ = await sessions.issue(tenant, key_id)
        response = _with_headers(RedirectResponse("/ui/runs", status_code=303))
        secure = request.url.scheme == "https"
        response.headers.append("set-cookie", Sessions.cookie_header(value, secure=secure))
        response.headers.append("set-cookie", Sessions.cookie_header(
            "", secure=secure, max_age=0, name=LOGIN_COOKIE))
        return response

    async def _login_failed(request: Request, error: str, status: int) -> Response:
        token = secrets.token_urlsafe(24)
        response = render(request, "login.html", http_status=status, login_csrf=token,
                          error=error)
        response.headers.append("set-cookie", Sessions.cookie_header(
            token, secure=request.url.scheme == "https", max_age=1800, name=LOGIN_COOKIE))
        return response

    @router.post("/logout")
    async def logout(request: Request) -> Response:
        if not csrf_checked(request, await form_of(request)):
            return render(request, "error.html", http_status=403, status_text="Forbidden",
                          message="The form's CSRF token is missing or wrong.")
        response = _with_headers(RedirectResponse("/ui/login", status_code=303))
        response.headers.append("set-cookie", Sessions.cookie_header(
            "", secure=request.url.scheme == "https", max_age=0, name=SESSION_COOKIE))
        return response

    # ------------------------------------------------------------------ runs

    async def workflow_names(tenant: str) -> list[str]:
        names: list[str] = []
        after = ""
        while len(names) < 1000:
            page = await stack.storage.kv_list(WORKFLOWS_NAMESPACE + tenant, after=after,
                                               limit=200)
            names.extend(key for key, _ in page)
            if len(page) < 200:
                break
            after = page[-1][0]
        return names

    @router.get("/runs")
    async def runs_page(request: Request) -> Response:
        tenant = session_of(request).tenant
        status = _text_param(request, "status", 20)
        workflow = _text_param(request, "workflow")
        q = _text_param(request, "q", 64)
        page = _page_number(request.query_params.get("page"))
        if q:
            run_id = await _find_run(tenant, q)
            if run_id is not None:
                return _with_headers(RedirectResponse(f"/ui/runs/{run_id}", status_code=303))
        tasks = await svc.queue.list_tasks(TaskQuery(
            tenant=tenant, status=status if status in _TASK_STATUSES else None,
            target=workflow or None, limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE))
        runs = [await svc.run_of(task) for task in tasks[:PAGE_SIZE]]
        query = {k: v for k, v in (("status", status), ("workflow", workflow)) if v}
        return render(request, "runs.html", active="Runs", runs=runs, page=page,
                      has_next=len(tasks) > PAGE_SIZE, statuses=_TASK_STATUSES,
                      status=status, workflow=workflow, q=q,
                      not_found_q=q if q else "",
                      workflows=await workflow_names(tenant),
                      query=urllib.parse.urlencode(query), refresh=page == 1)

    async def _find_run(tenant: str, q: str) -> str | None:
        """The run id of ``q`` (a run id or a task id of the tenant), or None."""
        if not all(c in "0123456789abcdef" for c in q.lower()):
            return None
        q = q.lower()
        try:
            return (await svc.task_of_run(tenant, q)).run_id
        except ApiError:
            pass
        try:
            return (await svc.task_of(tenant, q)).run_id
        except ApiError:
            return None

    async def sub_runs(record: Any) -> list[Any]:
        """The runs started by ``record`` and by its sub-runs, oldest first."""
        from flowyard import RunQuery

        until = record.finished_at or time.time()
        found: list[Any] = []
        offset = 0
        while offset < _SUB_RUN_SCAN:
            page = await stack.storage.list_runs(RunQuery(
                created_after=record.created_at, created_before=until + 1, limit=500,
                offset=offset, order="created_at"))
            found.extend(r for r in page if r.id != record.id)
            if len(page) < 500:
                break
            offset += 500
        parents = {record.id}
        out = []
        for run in found:  # oldest first: a parent comes before its children
            if run.metadata.get("parent_run_id") in parents:
                parents.add(run.id)
                out.append(run)
        return out

    def dag_nodes(definition: dict[str, Any], attempts: list[Any], run_status: str
                  ) -> list[Any]:
        workflow = parse_workflow(definition)
        states: dict[str, str] = {}
        keys: dict[str, set[str]] = {}
        for attempt in attempts:  # in order: the last attempt of a key decides
            keys.setdefault(attempt.step_id, set()).add(attempt.step_key)
            states[attempt.step_key] = attempt.status
        nodes = []
        for step in workflow.steps:
            tool = stack.tools.get(step.uses) if step.uses in stack.tools else None
            raw = tuple(getattr(tool, "raw_arguments", ()) or ())
            key_states = [states[k] for k in keys.get(step.id, ())]
            state = _step_state(key_states, run_status)
            nodes.append(DagNode(id=step.id, uses=step.uses,
                                 depends_on=tuple(sorted(step_dependencies(step, raw))),
                                 state=state, keys=max(1, len(key_states))))
        return nodes

    @router.get("/runs/{run_id}")
    async def run_page(request: Request, run_id: str) -> Response:
        tenant = session_of(request).tenant
        if len(run_id) > 64:
            return not_found(request, "run")
        try:
            task = await svc.task_of_run(tenant, run_id)
        except ApiError:
            return not_found(request, "run")
        run = await svc.run_of(task)
        storage = stack.storage
        try:
            record = await storage.get_run(run_id)
        except LookupError:
            record = None
        attempts = await storage.list_attempts(run_id) if record else []
        if record is not None:
            definition = record.workflow
        else:
            try:
                definition = await task_workflow(stack, task)
            except LookupError:
                definition = None
        try:
            nodes = dag_nodes(definition, attempts, run.status) if definition else []
        except Exception as exc:  # noqa: BLE001 - an unparsable stored definition
            nodes = []
            definition_error = f"{type(exc).__name__}: {exc}"
        else:
            definition_error = ""
        children = await sub_runs(record) if record else []
        costs = await storage.list_costs(run_id) if record else []
        for child in children:
            costs.extend(await storage.list_costs(child.id))
        logs = await storage.list_logs(run_id) if record else []
        events = await _last_events(storage, run_id) if record else []
        return render(
            request, "run.html", active="Runs", run=run, task=task, record=record,
            dag=render_dag_svg(nodes) if nodes else "", definition_error=definition_error,
            attempts=attempts, children=children, costs=costs, logs=logs, events=events,
            ended=task.status in _ENDED_TASK and run.status not in ("running", "pending"),
            can_cancel=task.status in ("queued", "running"),
            can_resume=task.status in ("failed", "cancelled") and run.status != "waiting",
            waiting_steps=_waiting_steps(record) if run.status == "waiting" else [],
            csrf=session_of(request).csrf)

    @router.post("/runs/{run_id}/answer")
    async def answer_step(request: Request, run_id: str) -> Response:
        session = session_of(request)
        form = await form_of(request)
        if not csrf_checked(request, form):
            return render(request, "error.html", http_status=403, status_text="Forbidden",
                          message="The form's CSRF token is missing or wrong.")
        run_id = run_id[:64]
        decision = form.get("decision", "")
        value: Any
        if decision in ("approve", "reject"):
            value = {"approved": decision == "approve"}
            if form.get("comment", "").strip():
                value["comment"] = form["comment"].strip()
        elif decision == "answer":
            try:
                value = json.loads(form.get("value", ""))
            except ValueError as exc:
                return back_to(f"/ui/runs/{run_id}", f"The answer is not JSON: {exc}")
        else:
            return back_to(f"/ui/runs/{run_id}", "Choose approve, reject or answer.")
        actor = f"api_key:{session.key_id}" if session.key_id else "loopback"
        try:
            await svc.answer(session.tenant, run_id, form.get("step", "")[:200], value,
                             actor=actor)
        except ApiError as exc:
            if exc.status_code == 404:
                return not_found(request, "run")
            return back_to(f"/ui/runs/{run_id}", f"Not answered: {exc.detail}")
        return back_to(f"/ui/runs/{run_id}", "Answered; the run was queued to resume.")

    @router.post("/runs/{run_id}/cancel")
    async def cancel_run(request: Request, run_id: str) -> Response:
        tenant = session_of(request).tenant
        if not csrf_checked(request, await form_of(request)):
            return render(request, "error.html", http_status=403, status_text="Forbidden",
                          message="The form's CSRF token is missing or wrong.")
        try:
            task = await svc.task_of_run(tenant, run_id[:64])
        except ApiError:
            return not_found(request, "run")
        await svc.queue.cancel_task(task.id, now=time.time())
        return back_to(f"/ui/runs/{run_id}", "Cancellation requested.")

    @router.post("/runs/{run_id}/resume")
    async def resume_run(request: Request, run_id: str) -> Response:
        tenant = session_of(request).tenant
        if not csrf_checked(request, await form_of(request)):
            return render(request, "error.html", http_status=403, status_text="Forbidden",
                          message="The form's CSRF token is missing or wrong.")
        try:
            task = await svc.task_of_run(tenant, run_id[:64])
        except ApiError:
            return not_found(request, "run")
        if task.status not in ("failed", "cancelled"):
            return back_to(f"/ui/runs/{run_id}",
                           f"The run's task is {task.status}; only a failed or cancelled "
                           "run can be resumed.")
        await svc.queue.retry_task(task.id)
        if svc.worker is not None:
            svc.worker.wake()
        return back_to(f"/ui/runs/{run_id}", "The run was queued to resume.")

    @router.get("/runs/{run_id}/events")
    async def run_events(request: Request, run_id: str) -> Response:
        tenant = session_of(request).tenant
        try:
            task = await svc.task_of_run(tenant, run_id[:64])
        except ApiError:
            return not_found(request, "run")
        start = 0
        last = request.headers.get("last-event-id", "")
        if last.isdigit() and len(last) < 20:
            start = int(last)
        else:
            after = request.query_params.get("after", "")
            start = int(after) if after.isdigit() and len(after) < 20 else 0

        async def task_done() -> bool:
            return (await svc.queue.get_task(task.id)).status in _ENDED_TASK

        async def stream() -> AsyncIterator[dict[str, Any]]:
            svc.sse_connections += 1
            try:
                async for item in follow_run(stack, task.run_id, after_seq=start,
                                             poll=svc.settings.sse_poll, hub=svc.hub,
                                             relay=svc.relay, task_done=task_done):
                    yield item
            finally:
                svc.sse_connections -= 1

        response = EventSourceResponse(stream(), ping=svc.settings.sse_ping)
        for name, value in _SECURITY_HEADERS.items():
            if name != "cache-control":
                response.headers[name] = value
        return response

    # ------------------------------------------------------------------ tasks and agents

    @router.get("/tasks")
    async def tasks_page(request: Request) -> Response:
        tenant = session_of(request).tenant
        status = _text_param(request, "status", 20)
        page = _page_number(request.query_params.get("page"))
        tasks = await svc.queue.list_tasks(TaskQuery(
            tenant=tenant, status=status if status in _TASK_STATUSES else None,
            limit=PAGE_SIZE + 1, offset=(page - 1) * PAGE_SIZE))
        query = urllib.parse.urlencode({"status": status} if status else {})
        return render(request, "tasks.html", active="Tasks", tasks=tasks[:PAGE_SIZE],
                      page=page, has_next=len(tasks) > PAGE_SIZE, statuses=_TASK_STATUSES,
                      status=status, query=query)

    @router.get("/agents")
    async def agents_page(request: Request) -> Response:
        tenant = session_of(request).tenant
        agents: list[dict[str, Any]] = []
        after = ""
        while len(agents) < 1000:
            page = await stack.storage.kv_list(AGENTS_NAMESPACE + tenant, after=after,
                                               limit=200)
            agents.extend(dict(value) for _, value in page if isinstance(value, dict))
            if len(page) < 200:
                break
            after = page[-1][0]
        agents.sort(key=lambda a: a.get("created_at") or 0, reverse=True)
        return render(request, "agents.html", active="Agents", agents=agents)

    # ------------------------------------------------------------------ costs and providers

    @router.get("/costs")
    async def costs_page(request: Request) -> Response:
        days_text = _text_param(request, "days", 4)
        days = int(days_text) if days_text.isdigit() else 7
        days = min(max(days, 1), 366)
        from flowyard_server.ui.costs import costs_context

        context = await costs_context(svc, session_of(request).tenant, days=days)
        return render(request, "costs.html", active="Costs", **{"days": days, **context})

    @router.get("/providers")
    async def providers_page(request: Request) -> Response:
        from flowyard_server.ui.providers import providers_context

        return render(request, "providers.html", active="Providers",
                      **await providers_context(svc))

    return router


def _waiting_steps(record: Any) -> list[dict[str, Any]]:
    """The human steps of a stored run that wait for an answer, in the order they began
    waiting: ``[{key, prompt, kind, schema, deadline}]`` (from ``metadata["human"]``, see
    docs/workflows.md "Human steps").
    """
    if record is None:
        return []
    human = record.metadata.get("human") or {}
    answers = human.get("answers") or {}
    waiting = [(key, request) for key, request in (human.get("waiting") or {}).items()
               if key not in answers and isinstance(request, dict)]
    waiting.sort(key=lambda item: item[1].get("since") or 0)
    return [{"key": key, "prompt": str(request.get("prompt", "")),
             "kind": request.get("kind", "input"), "schema": request.get("schema"),
             "deadline": request.get("deadline")} for key, request in waiting]


async def _last_events(storage: Any, run_id: str) -> list[Any]:
    """The run's last :data:`_EVENTS_SHOWN` stored events (read in pages of 1,000, so memory
    stays bounded however long the log is).
    """
    tail: collections.deque[Any] = collections.deque(maxlen=_EVENTS_SHOWN)
    seq = 0
    while True:
        page = await storage.list_events(run_id, after_seq=seq, limit=1000)
        tail.extend(page)
        if len(page) < 1000:
            return list(tail)
        seq = page[-1].seq


def _step_state(key_states: list[str], run_status: str) -> str:
    """The state shown for a step from the states of its keys (attempt statuses)."""
    if not key_states:
        return "cancelled" if run_status == "cancelled" else "pending"
    for state in ("running", "retrying", "failed"):
        if state in key_states:
            return state
    if all(s == "skipped" for s in key_states):
        return "skipped"
    if all(s in ("completed", "skipped") for s in key_states):
        return "completed"
    if "cancelled" in key_states:
        return "cancelled"
    return key_states[-1]
