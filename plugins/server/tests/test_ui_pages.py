"""The dashboard over HTTP (the browser tests in tests/e2e drive it in Chromium): the login
and its session cookie, CSRF, tenant isolation, escaping of hostile strings, security headers,
and each page's data.
"""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

import anyio
import httpx
import pytest
from flowyard import Stack

PAYLOAD = '<script>window.pwned=1</script><img src=x onerror="window.pwned=2">'


def _login(server: Any, tenant: str) -> httpx.Client:
    """A browser-like client logged in as ``tenant`` (the session cookie set)."""
    browser = httpx.Client(base_url=server.url, timeout=10.0)
    page = browser.get("/ui/login")
    assert page.status_code == 200
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    done = browser.post("/ui/login", data={"api_key": server.keys[tenant], "csrf": csrf})
    assert done.status_code == 303 and done.headers["location"] == "/ui/runs", done.text
    return browser


def _csrf(page: str) -> str:
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page).group(1)


def _wait(client: httpx.Client, task_id: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        task = client.get(f"/v1/tasks/{task_id}").json()
        if task["status"] in statuses:
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.05)


def test_pages_need_a_session(server: Any) -> None:
    with httpx.Client(base_url=server.url) as anonymous:
        for path in ("/ui", "/ui/runs", "/ui/tasks", "/ui/agents", "/ui/costs",
                     "/ui/providers", "/ui/runs/" + "0" * 32):
            response = anonymous.get(path)
            assert response.status_code == 303, path
            assert response.headers["location"] == "/ui/login"
        assert anonymous.post("/ui/runs/" + "0" * 32 + "/cancel").status_code == 401
        # an API key header is not a browser session
        keyed = anonymous.get("/ui/runs", headers={"Authorization": f"Bearer {server.keys['a']}"})
        assert keyed.status_code == 303
        assert anonymous.get("/ui/static/htmx-2.0.11.min.js").status_code == 200  # public


def test_login_sets_a_strict_session_cookie_and_never_stores_the_key(server: Any) -> None:
    browser = httpx.Client(base_url=server.url)
    page = browser.get("/ui/login")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["x-frame-options"] == "DENY"
    csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
    wrong = browser.post("/ui/login", data={"api_key": "fy_000000000000_" + "x" * 43,
                                             "csrf": csrf})
    assert wrong.status_code == 401 and 'id="login-error"' in wrong.text
    csrf = re.search(r'name="csrf" value="([^"]+)"', wrong.text).group(1)
    # the login form's own token (double submit): a form from elsewhere is refused
    forged = httpx.post(server.url + "/ui/login", data={"api_key": server.keys["a"],
                                                        "csrf": "made-up"})
    assert forged.status_code == 400 and "fy_session" not in forged.headers.get("set-cookie", "")
    done = browser.post("/ui/login", data={"api_key": server.keys["a"], "csrf": csrf})
    assert done.status_code == 303
    cookie = next(v for v in done.headers.get_list("set-cookie") if v.startswith("fy_session="))
    for flag in ("HttpOnly", "SameSite=Strict", "Path=/ui", "Max-Age="):
        assert flag in cookie
    value = cookie.split(";")[0].split("=", 1)[1]
    payload = json.loads(base64.urlsafe_b64decode(value.split(".")[0] + "=="))
    assert payload["t"] == "a" and server.keys["a"] not in value
    assert server.keys["a"].split("_", 2)[2] not in cookie
    runs = browser.get("/ui/runs")
    assert runs.status_code == 200 and '<b id="tenant">a</b>' in runs.text
    # a tampered cookie (tenant b with the old signature) is no session
    evil = base64.urlsafe_b64encode(json.dumps({**payload, "t": "b"}).encode()).rstrip(b"=")
    tampered = httpx.get(server.url + "/ui/runs",
                         cookies={"fy_session": evil.decode() + "." + value.split(".")[1]})
    assert tampered.status_code == 303
    # logout needs the CSRF token, then ends the browser's session
    assert browser.post("/ui/logout", data={"csrf": "wrong"}).status_code == 403
    out = browser.post("/ui/logout", data={"csrf": _csrf(runs.text)})
    assert out.status_code == 303 and 'fy_session=;' in out.headers["set-cookie"]
    assert browser.get("/ui/runs").status_code == 303


def test_a_revoked_key_ends_its_sessions(server: Any) -> None:
    from flowyard_server.keys import KeyStore

    async def new_key() -> str:
        return (await KeyStore(server.stack.storage).create("a", name="short-lived"))[0]

    key = anyio.run(new_key)
    browser = httpx.Client(base_url=server.url)
    csrf = re.search(r'name="csrf" value="([^"]+)"', browser.get("/ui/login").text).group(1)
    assert browser.post("/ui/login", data={"api_key": key, "csrf": csrf}).status_code == 303
    assert browser.get("/ui/runs").status_code == 200

    async def revoke() -> None:
        assert await KeyStore(server.stack.storage).revoke(key.split("_")[1])

    anyio.run(revoke)
    assert browser.get("/ui/runs").status_code == 303


def test_tenants_see_only_their_own(server: Any, registered: dict[str, str]) -> None:
    with server.client("a") as api:
        task = api.post("/v1/tasks", json={"target": "hello", "name": "a-only"}).json()
        _wait(api, task["id"], "completed")
    a, b = _login(server, "a"), _login(server, "b")
    assert task["run_id"] in a.get("/ui/runs").text
    assert a.get(f"/ui/runs/{task['run_id']}").status_code == 200
    for path in ("/ui/runs", "/ui/tasks", "/ui/costs"):
        page = b.get(path)
        assert page.status_code == 200 and task["run_id"] not in page.text, path
        assert "a-only" not in page.text
    missing = b.get(f"/ui/runs/{task['run_id']}")
    assert missing.status_code == 404
    assert missing.text == b.get("/ui/runs/" + "f" * 32).text.replace("f" * 32, task["run_id"])
    # searching another tenant's id does not jump to it
    assert b.get("/ui/runs", params={"q": task["run_id"]}).status_code == 200
    assert a.get("/ui/runs", params={"q": task["id"]}).headers["location"] == (
        f"/ui/runs/{task['run_id']}")
    # buttons on another tenant's run do nothing
    csrf = _csrf(b.get("/ui/runs").text)
    assert b.post(f"/ui/runs/{task['run_id']}/resume", data={"csrf": csrf}).status_code == 404


def test_hostile_strings_are_escaped_everywhere(server: Any) -> None:
    source = f"""\
name: hostile
steps:
  - id: say
    uses: echo
    with:
      value: {json.dumps(PAYLOAD)}
outputs:
  said: "${{say}}"
"""
    with server.client("a") as api:
        assert api.post("/v1/workflows", json={"source": source}).status_code == 201
        task = api.post("/v1/tasks", json={"target": "hostile", "name": PAYLOAD}).json()
        _wait(api, task["id"], "completed")
        agent = api.post("/v1/agents", json={"name": PAYLOAD, "instructions": PAYLOAD,
                                             "capabilities": ["x"]})
        assert agent.status_code == 201, agent.text
    browser = _login(server, "a")
    pages = [browser.get(f"/ui/runs/{task['run_id']}"), browser.get("/ui/tasks"),
             browser.get("/ui/agents"),
             browser.get("/ui/runs", params={"q": PAYLOAD, "workflow": PAYLOAD,
                                             "status": PAYLOAD})]
    for page in pages:
        assert page.status_code == 200
        assert "<script>window.pwned" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page.text or \
            "\\u003cscript" in page.text or "&lt;script&gt;" in page.text
        assert page.headers["content-security-policy"].startswith("default-src 'self'")


def test_run_page_shows_the_dag_steps_and_buttons_act(server: Any,
                                                      registered: dict[str, str]) -> None:
    browser = _login(server, "a")
    with server.client("a") as api:
        task = api.post("/v1/tasks", json={"target": "slow", "inputs": {"seconds": 30}}).json()
        _wait(api, task["id"], "running")
        page = browser.get(f"/ui/runs/{task['run_id']}")
        assert page.status_code == 200
        assert 'id="dag"' in page.text and 'data-step="nap"' in page.text
        assert 'id="cancel-run"' in page.text and 'id="resume-run"' not in page.text
        assert 'data-ended="false"' in page.text
        csrf = _csrf(page.text)
        # without the CSRF token the button does nothing
        assert browser.post(f"/ui/runs/{task['run_id']}/cancel").status_code == 403
        assert api.get(f"/v1/tasks/{task['id']}").json()["status"] == "running"
        done = browser.post(f"/ui/runs/{task['run_id']}/cancel", data={"csrf": csrf})
        assert done.status_code == 303 and "flash=" in done.headers["location"]
        _wait(api, task["id"], "cancelled")
        page = browser.get(f"/ui/runs/{task['run_id']}")
        assert 'id="resume-run"' in page.text and 'id="cancel-run"' not in page.text
        resumed = browser.post(f"/ui/runs/{task['run_id']}/resume",
                               data={"csrf": _csrf(page.text)})
        assert resumed.status_code == 303
        assert api.get(f"/v1/tasks/{task['id']}").json()["status"] in ("queued", "running")
        api.post(f"/v1/tasks/{task['id']}/cancel")
        _wait(api, task["id"], "cancelled")


def test_pages_are_compressed_and_the_api_is_not(server: Any, registered: dict[str, str]
                                                 ) -> None:
    browser = _login(server, "a")
    page = browser.get("/ui/runs", headers={"Accept-Encoding": "gzip"})
    assert page.headers["content-encoding"] == "gzip" and "</html>" in page.text
    with server.client("a") as api:
        listed = api.get("/v1/runs", params={"limit": 200}, headers={"Accept-Encoding": "gzip"})
    assert listed.status_code == 200 and "content-encoding" not in listed.headers


def test_run_events_stream_with_the_session(server: Any, registered: dict[str, str]) -> None:
    source = """\
name: ui-chat
steps:
  - id: nap
    uses: sleep
    with: {seconds: 0.6}
  - id: ask
    uses: llm.chat
    depends_on: [nap]
    with: {model: fake/echo, prompt: "tell the browser"}
"""
    browser = _login(server, "a")
    with server.client("a") as api:
        assert api.post("/v1/workflows", json={"source": source}).status_code == 201
        task = api.post("/v1/tasks", json={"target": "ui-chat"}).json()
    with browser.stream("GET", f"/ui/runs/{task['run_id']}/events") as response:
        assert response.status_code == 200
        types = [line.split(":", 1)[1].strip() for line in response.iter_lines()
                 if line.startswith("event:")]
    assert types[0] == "run.started" and types[-1] == "run.finished"
    assert "step.delta" in types  # the `ask` step's token deltas


def test_runs_list_filters_and_pages(server: Any, registered: dict[str, str]) -> None:
    with server.client("a") as api:
        batch = api.post("/v1/tasks/batch", json={"tasks": [
            {"target": "hello", "inputs": {"who": f"n{i}"}} for i in range(55)]})
        assert batch.status_code in (200, 201), batch.text
        for task in batch.json():
            _wait(api, task["id"], "completed")
    browser = _login(server, "a")
    first = browser.get("/ui/runs", params={"workflow": "hello", "status": "completed"})
    rows = re.findall(r'<tr class="run-row" data-run-id="([0-9a-f]+)"', first.text)
    assert len(rows) == 50 and 'id="next-page"' in first.text
    second = browser.get("/ui/runs", params={"workflow": "hello", "status": "completed",
                                             "page": 2})
    more = re.findall(r'<tr class="run-row" data-run-id="([0-9a-f]+)"', second.text)
    assert more and not set(more) & set(rows) and 'id="prev-page"' in second.text
    failed = browser.get("/ui/runs", params={"status": "failed", "workflow": "hello"})
    assert 'class="run-row"' not in failed.text


@pytest.mark.anyio
async def test_without_keys_loopback_browsers_get_a_session() -> None:
    from flowyard_server.ui.session import Sessions
    from flowyard_server.keys import KeyStore

    async with Stack(config={"storage": {"url": "memory://"}}) as stack:
        store = KeyStore(stack.storage)
        sessions = Sessions(store, stack.storage)
        assert await sessions.keyless_allowed(("127.0.0.1", 5000))
        assert not await sessions.keyless_allowed(("10.1.2.3", 5000))
        value, session = await sessions.issue("default", "")
        assert (await sessions.check(value)) == session
        key, _ = await store.create("t")
        assert await sessions.check(value) is None  # keys exist now: log in with one
        assert not await sessions.keyless_allowed(("127.0.0.1", 5000))
        value, session = await sessions.issue("t", key.split("_")[1])
        checked = await sessions.check(value)
        assert checked is not None and checked.tenant == "t"
        assert Sessions.csrf_ok(checked, session.csrf)
        assert not Sessions.csrf_ok(checked, session.csrf[:-1] + "x")
        assert await sessions.check(value + "x") is None
        assert await sessions.check("a.b.c") is None and await sessions.check("") is None
