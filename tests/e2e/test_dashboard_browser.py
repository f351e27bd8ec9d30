"""The dashboard (``/ui``) in a real browser: headless Chromium driven by Selenium against a
real ``flowyard serve`` (in-process worker, SQLite, API keys of two tenants), the data seeded
through the HTTP API.

- logging in: a wrong key is refused, the right one gives an HttpOnly, SameSite=Strict
  session cookie on ``/ui``; logging out ends it; no session means the login page;
- the runs list: filters by status and workflow, jumps to a run by run or task id, pages by 50;
- a run's page follows the run live: its DAG nodes change state and an LLM step's tokens
  stream in without a reload;
- the cancel and resume buttons act on the run's task;
- user-controlled text (workflow and task names, step outputs, log lines, agent names and
  instructions, query parameters) shows as text and never runs as script;
- one tenant sees nothing of another's, and another tenant's run is a 404 page;
- the tasks, agents, costs and providers pages show their data.

Every page must load without a console error (SEVERE browser log entries: script errors, CSP
violations, failed loads), and every page is saved as a screenshot under
``out/test-artifacts/dashboard/`` (the path is printed).

Chromium and chromium-driver come from Debian (scripts/system-deps.sh installs them); when they
are missing the tests fail, they do not skip. The server and the browser start once for the
module.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import flowyard_server  # noqa: F401 - installed in .venv with every distribution
import flowyard_sql  # noqa: F401
import httpx
import pytest
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

pytestmark = [pytest.mark.slow]


def _load_support() -> Any:
    """tests/e2e/dashboard_support.py, loaded by path (test modules cannot import conftest,
    and --import-mode=importlib puts no test folder on sys.path)."""
    name = "flowyard_e2e_dashboard_support"
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().with_name("dashboard_support.py")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


ds = _load_support()

QUICK = """\
name: quick
inputs:
  n: {type: integer, default: 0}
steps:
  - id: one
    uses: echo
    with: {value: "number {{ inputs.n }}"}
outputs:
  said: "${one}"
"""
# fails at run time: the fake provider has no model "nope"
BROKEN = """\
name: broken
steps:
  - id: ask
    uses: llm.chat
    with: {model: fake/nope, prompt: hello}
"""
# a model call with a price (the fake provider's "priced" model), for the costs page
PRICED = """\
name: priced
steps:
  - id: ask
    uses: llm.chat
    with: {model: fake/priced, prompt: "what does this cost, roughly, per token and per call"}
outputs:
  answer: "${ask}"
"""
# a sleep, then echo steps that depend on it, and an LLM step that streams its answer
PROMPT_WORDS = " ".join(f"word{i}" for i in range(40))
LIVE_DAG = f"""\
name: live-dag
steps:
  - id: nap
    uses: sleep
    with: {{seconds: 3}}
  - id: e1
    uses: echo
    depends_on: [nap]
    with: {{value: one}}
  - id: e2
    uses: echo
    depends_on: [nap]
    with: {{value: two}}
  - id: e3
    uses: echo
    depends_on: [e1, e2]
    with: {{value: three}}
  - id: chat
    uses: llm.chat
    depends_on: [e1]
    with: {{model: fake/echo, prompt: "{PROMPT_WORDS}", stream: true}}
outputs:
  answer: "${{chat}}"
"""
LONG_NAP = """\
name: long-nap
steps:
  - id: nap
    uses: sleep
    with: {seconds: 120}
  - id: after
    uses: echo
    depends_on: [nap]
    with: {value: woke up}
"""
SHORT_NAP = """\
name: short-nap
steps:
  - id: nap
    uses: sleep
    with: {seconds: 1.5}
"""
BETA_ONLY = """\
name: beta-only
steps:
  - id: one
    uses: echo
    with: {value: beta says hi}
"""

# Injection payloads: a workflow name, and text that ends up in outputs, logs, task names,
# agents and query parameters. Rendered as text they are harmless; run as HTML they would set
# window.pwned or open an alert (which Selenium reports as UnexpectedAlertPresentException).
PAYLOAD = "<script>window.pwned=1</script><img src=x onerror=window.pwned=2>"
NAME_PAYLOAD = "<img src=x onerror=alert(1)>"
ATTR_PAYLOAD = "\"'><svg onload=window.pwned=3>"
EVIL = f"""\
name: "{NAME_PAYLOAD}"
description: "{PAYLOAD}"
steps:
  - id: out
    uses: echo
    with:
      value: "{PAYLOAD}"
  - id: say
    uses: log
    with:
      message: "{PAYLOAD}"
outputs:
  evil: "${{out}}"
"""
# Console errors that are not the dashboard's (none: every SEVERE entry fails the page).
SEVERE_OK: tuple[str, ...] = ()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """``flowyard serve`` with the in-process worker and API keys of tenants alpha and beta."""
    server = ds.Server(tmp_path_factory.mktemp("dashboard"), worker=True, concurrency=4)
    server.create_key("alpha")
    server.create_key("beta")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        log = server.log()
        for key in server.keys.values():
            assert key not in log, "an API key was written to the server log"
        assert "Traceback" not in log, log[-5000:]


@pytest.fixture(scope="module")
def seeded(server: Any) -> dict[str, Any]:
    """Data of both tenants, all finished: 60 runs of ``quick`` and 3 failed ``broken`` runs,
    one ``priced`` run and an agent for alpha; two ``beta-only`` runs and an agent for beta."""
    alpha, beta = server.api("alpha"), server.api("beta")
    for source in (QUICK, BROKEN, PRICED, LIVE_DAG, LONG_NAP):
        alpha.register(source)
    beta.register(BETA_ONLY)
    quick = alpha.submit_batch({"target": "quick", "inputs": {"n": i}, "name": f"quick-{i}"}
                               for i in range(60))
    broken = alpha.submit_batch({"target": "broken", "name": f"broken-{i}"} for i in range(3))
    priced = alpha.submit("priced", name="priced-call")
    agent = alpha.create_agent(name="alpha-helper", instructions="Answer briefly.",
                               model="fake/echo", capabilities=["summarize"])
    beta_tasks = beta.submit_batch({"target": "beta-only", "name": f"beta-{i}"}
                                   for i in range(2))
    beta_agent = beta.create_agent(name="beta-helper", instructions="Beta's own agent.")
    for api, tasks in ((alpha, [*quick, *broken, priced]), (beta, beta_tasks)):
        api.wait_tasks([t["id"] for t in tasks], {"completed", "failed", "cancelled"})
    quick = [alpha.task(t["id"]) for t in quick]
    broken = [alpha.task(t["id"]) for t in broken]
    assert {t["status"] for t in quick} == {"completed"}
    assert {t["status"] for t in broken} == {"failed"}
    assert alpha.task(priced["id"])["status"] == "completed"
    return {"alpha": alpha, "beta": beta, "quick": quick, "broken": broken,
            "priced": alpha.task(priced["id"]), "agent": agent,
            "beta_tasks": [beta.task(t["id"]) for t in beta_tasks], "beta_agent": beta_agent}


@pytest.fixture(scope="module")
def driver(request: pytest.FixtureRequest) -> Iterator[Any]:
    """One headless Chromium for the module (a missing browser fails here, never skips).
    The screenshots of an earlier run are removed first; where they are is printed at the
    end."""
    try:
        ds.check_browser()
    except ds.BrowserMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    for old in ds.ARTIFACTS.glob("*.png"):
        old.unlink()
    driver = ds.make_driver()
    try:
        yield driver
    finally:
        driver.quit()
        shots = sorted(ds.ARTIFACTS.glob("*.png"))
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        if capture is not None and shots:
            with capture.global_and_fixture_disabled():
                print(f"\ndashboard screenshots ({len(shots)}): {ds.ARTIFACTS}")


# ------------------------------------------------------------------------------ helpers


def _path(driver: Any) -> str:
    return urllib.parse.urlsplit(driver.current_url).path


def _console_errors(driver: Any, status: int | None = None, strict: bool = False
                    ) -> list[str]:
    """The console errors since the last call, but the page's own status ``status`` (a 401
    or 404 page logs its document as a failed load) and, unless ``strict``, those of
    :data:`SEVERE_OK`."""
    own = f"{driver.current_url} - Failed to load resource: the server responded with a " \
          f"status of {status} "
    return [e for e in ds.console_errors(driver)
            if (strict or not any(ok in e for ok in SEVERE_OK))
            and not (status and e.startswith(own))]


def _check_page(driver: Any, name: str, status: int | None = None) -> None:
    """The page shows no console error and ran no injected script; save its screenshot.

    Args:
        status: the page's own HTTP status when it is an error page (401, 404).
    """
    ds.screenshot(driver, name)
    _assert_inert(driver)
    errors = _console_errors(driver, status)
    assert not errors, f"console errors on {driver.current_url}: {errors}"


def _assert_inert(driver: Any) -> None:
    try:
        alert = driver.switch_to.alert
        text = alert.text
        alert.dismiss()
        raise AssertionError(f"an alert opened on {driver.current_url}: {text!r}")
    except NoAlertPresentException:
        pass
    assert driver.execute_script("return typeof window.pwned") == "undefined", \
        f"injected script ran on {driver.current_url}"


def _rows(driver: Any, selector: str, attribute: str) -> list[dict[str, Any]]:
    """The rows matching ``selector``: the attribute's value, the text and the first link
    (read in one script: htmx may swap the table body between two WebDriver calls)."""
    return driver.execute_script("""
        const [selector, attribute] = arguments;
        return [...document.querySelectorAll(selector)].map(row => ({
          id: row.getAttribute(attribute), text: row.innerText,
          cells: [...row.cells].map(c => c.innerText.trim()),
          href: (row.querySelector('a') || {getAttribute: () => null}).getAttribute('href'),
        }));""", selector, attribute)


def _run_rows(driver: Any) -> list[dict[str, Any]]:
    return _rows(driver, "#runs #runs-body tr.run-row", "data-run-id")


def _get(driver: Any, server: Any, path: str) -> None:
    driver.get(server.url + path)


def _session(driver: Any) -> dict[str, str]:
    cookies = ds.session_cookies(driver)
    assert "fy_session" in cookies, f"no session cookie: {driver.get_cookies()}"
    return {"Cookie": f"fy_session={cookies['fy_session']}"}


def _fetch(server: Any, driver: Any, path: str) -> httpx.Response:
    """GET ``path`` with the browser's session cookie (headers and status codes, which
    WebDriver does not show)."""
    return httpx.get(server.url + path, headers=_session(driver), timeout=30,
                     follow_redirects=False)


def _assert_security_headers(response: httpx.Response) -> None:
    csp = response.headers.get("content-security-policy", "")
    assert "default-src 'self'" in csp and "script-src 'self'" in csp, csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, csp
    assert "frame-ancestors 'none'" in csp, csp
    assert response.headers.get("x-content-type-options") == "nosniff"


def _wait_status(driver: Any, server: Any, run_id: str, statuses: set[str],
                 timeout: float = 30.0) -> str:
    """Reload the run's page until ``span#run-status`` shows one of ``statuses``."""
    def status() -> str | None:
        value = driver.find_element(By.ID, "run-status").get_attribute("data-status")
        if value in statuses:
            return value
        _get(driver, server, f"/ui/runs/{run_id}")
        return None

    return ds.wait_for(status, timeout, 0.5,
                       message=lambda: f"run {run_id} to be {statuses} on its page")


def _nav_links(driver: Any) -> list[str]:
    return driver.execute_script(
        "return [...document.querySelectorAll('header nav a')].map(a => a.getAttribute('href'))")


# ------------------------------------------------------------------------------ tests


def test_browser_is_installed() -> None:
    chromium, chromedriver = ds.check_browser()
    print(chromium, "/", chromedriver)


def test_every_page_loads_without_console_errors(server: Any, driver: Any,
                                                 seeded: dict[str, Any]) -> None:
    """Nothing in the console on any page, the browser's own requests (``/favicon.ico``,
    asked for after the page loaded) included."""
    run_id = seeded["priced"]["run_id"]
    ds.login(driver, server.url, server.keys["alpha"])
    ds.console_errors(driver)  # only the pages below count
    problems = {}
    for path in ("/ui/login", "/ui/runs", "/ui/tasks", "/ui/agents", "/ui/costs",
                 "/ui/providers", f"/ui/runs/{run_id}"):
        _get(driver, server, path)
        time.sleep(0.3)  # the favicon is fetched after the page loaded
        errors = _console_errors(driver, strict=True)
        if errors:
            problems[path] = errors
    assert not problems, f"console errors: {problems}"


def test_login_flow(server: Any, driver: Any) -> None:
    # no session: every page leads to the login page
    driver.delete_all_cookies()
    for path in ("/ui/runs", "/ui/tasks", "/ui/agents", "/ui/costs", "/ui/providers",
                 "/ui/runs/0123456789abcdef0123456789abcdef", "/ui"):
        _get(driver, server, path)
        assert _path(driver) == "/ui/login", f"{path} without a session: {driver.current_url}"
    assert driver.find_element(By.ID, "login-form").is_displayed()
    assert driver.find_element(By.ID, "api-key").get_attribute("name") == "api_key"
    assert driver.find_element(By.ID, "api-key").get_attribute("type") == "password"
    _check_page(driver, "login")

    # a wrong key: the login page again, with an error (and status 401)
    driver.find_element(By.ID, "api-key").send_keys("fy_0123456789ab_" + "x" * 43)
    driver.find_element(By.ID, "login").click()
    error = ds.wait_for(lambda: driver.find_elements(By.ID, "login-error"), 10,
                        message="p#login-error")[0]
    assert "not valid" in error.text
    assert "fy_session" not in ds.session_cookies(driver)
    _check_page(driver, "login-wrong-key", status=401)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        page = http.get("/ui/login")
        _assert_security_headers(page)
        token = page.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
        wrong = http.post("/ui/login", data={"csrf": token, "api_key": "fy_nope"})
        assert wrong.status_code == 401 and 'id="login-error"' in wrong.text
        assert "fy_session" not in wrong.cookies

    # the right key: the runs list and a session cookie the page's scripts cannot read
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(server.keys["alpha"])
    driver.find_element(By.ID, "login").click()
    ds.wait_for(lambda: _path(driver) == "/ui/runs", 10, message="the runs list")
    cookies = {c["name"]: c for c in driver.get_cookies()}
    session = cookies["fy_session"]
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert session["path"] == "/ui"
    assert server.keys["alpha"] not in session["value"]
    assert "fy_login" not in cookies, "the login form's cookie outlives the login"
    assert driver.execute_script("return document.cookie") == ""
    assert driver.find_element(By.ID, "tenant").text == "alpha"
    assert _nav_links(driver) == ["/ui/runs", "/ui/tasks", "/ui/agents", "/ui/costs",
                                  "/ui/providers"]
    _check_page(driver, "runs-after-login")

    # logging out ends the session: the pages lead to the login page again
    driver.find_element(By.ID, "logout").click()
    ds.wait_for(lambda: _path(driver) == "/ui/login", 10, message="the login page")
    assert "fy_session" not in ds.session_cookies(driver)
    _get(driver, server, "/ui/runs")
    assert _path(driver) == "/ui/login"
    _check_page(driver, "logged-out")


def test_runs_list_filters_search_and_pages(server: Any, driver: Any,
                                            seeded: dict[str, Any]) -> None:
    ds.login(driver, server.url, server.keys["alpha"])
    quick_runs = {t["run_id"] for t in seeded["quick"]}
    broken_runs = {t["run_id"] for t in seeded["broken"]}

    rows = _run_rows(driver)
    assert len(rows) == 50, f"{len(rows)} rows on page 1"
    assert driver.find_elements(By.ID, "next-page")
    assert not driver.find_elements(By.ID, "prev-page")
    # cells: status, workflow, run link, started, duration, cost, tokens
    first = rows[0]
    assert len(first["cells"]) == 7, first
    assert first["href"] == f"/ui/runs/{first['id']}"
    by_id = {r["id"]: r for r in rows}
    some = next(t for t in reversed(seeded["quick"]) if t["run_id"] in by_id)
    row = by_id[some["run_id"]]
    assert row["cells"][0] == "completed" and row["cells"][1] == "quick", row
    assert row["cells"][2] == some["run_id"][:12]
    assert row["cells"][3].startswith("20"), row  # started, UTC
    assert row["cells"][4].endswith(" s"), row  # duration
    _check_page(driver, "runs")

    # the first page refreshes itself (htmx, every few seconds): a new run shows up
    driver.execute_script("window.__marker = 'no reload'")
    seeded["alpha"].register(QUICK.replace("name: quick", "name: fresh"))
    fresh = seeded["alpha"].submit("fresh", priority=100)
    ds.wait_for(lambda: fresh["run_id"] in {r["id"] for r in _run_rows(driver)}, 15, 0.2,
                message="the new run on the runs list without a reload")
    assert driver.execute_script("return window.__marker") == "no reload"
    assert len(_run_rows(driver)) == 50
    _check_page(driver, "runs-refreshed")

    # filter by status through the form
    Select(driver.find_element(By.CSS_SELECTOR, "#run-filters select[name=status]")
           ).select_by_value("failed")
    driver.find_element(By.ID, "apply-filters").click()
    ds.wait_for(lambda: "status=failed" in driver.current_url, 10, message="status=failed")
    rows = _run_rows(driver)
    assert {r["id"] for r in rows} >= broken_runs
    assert all(r["cells"][0] == "failed" for r in rows), rows
    assert not {r["id"] for r in rows} & quick_runs
    assert not driver.find_elements(By.ID, "next-page")
    _check_page(driver, "runs-filter-failed")

    # filter by workflow: 60 runs of quick, 50 on the first page, 10 on the next
    Select(driver.find_element(By.CSS_SELECTOR, "#run-filters select[name=status]")
           ).select_by_value("")
    workflows = Select(driver.find_element(By.CSS_SELECTOR, "#run-filters select[name=workflow]"))
    assert {"quick", "broken", "priced"} <= {o.get_attribute("value") for o in workflows.options}
    workflows.select_by_value("quick")
    driver.find_element(By.ID, "apply-filters").click()
    ds.wait_for(lambda: "workflow=quick" in driver.current_url, 10, message="workflow=quick")
    page1 = _run_rows(driver)
    assert len(page1) == 50 and all(r["cells"][1] == "quick" for r in page1)
    _check_page(driver, "runs-filter-workflow")
    driver.find_element(By.ID, "next-page").click()
    ds.wait_for(lambda: "page=2" in driver.current_url, 10, message="page 2")
    assert "workflow=quick" in driver.current_url, "the filter is lost when paging"
    page2 = _run_rows(driver)
    assert len(page2) == 10, f"{len(page2)} rows on page 2"
    assert {r["id"] for r in page1} | {r["id"] for r in page2} == quick_runs
    assert not driver.find_elements(By.ID, "next-page")
    assert driver.find_elements(By.ID, "prev-page")
    _check_page(driver, "runs-page-2")
    driver.find_element(By.ID, "prev-page").click()
    ds.wait_for(lambda: "page=1" in driver.current_url or "page=" not in driver.current_url,
                10, message="page 1")
    assert {r["id"] for r in _run_rows(driver)} == {r["id"] for r in page1}

    # the unfiltered list pages too
    _get(driver, server, "/ui/runs?page=2")
    assert len(_run_rows(driver)) >= 14

    # search: a run id jumps to the run, a task id to its run, an unknown id stays
    target = seeded["broken"][0]
    _get(driver, server, "/ui/runs")
    search = driver.find_element(By.CSS_SELECTOR, "#run-filters input[name=q]")
    search.send_keys(target["run_id"])
    driver.find_element(By.ID, "apply-filters").click()
    ds.wait_for(lambda: _path(driver) == f"/ui/runs/{target['run_id']}", 10,
                message="the run found by its id")
    assert driver.find_element(By.ID, "run-status").get_attribute("data-status") == "failed"
    assert "no model 'nope'" in driver.find_element(By.ID, "run-error").text
    assert driver.find_element(By.CSS_SELECTOR, 'svg#dag g.node[data-step="ask"]'
                               ).get_attribute("data-state") == "failed"
    assert "failed" in driver.find_element(By.CSS_SELECTOR,
                                           'table#steps tr.step-row[data-step="ask"]').text
    assert driver.find_elements(By.ID, "resume-run")
    assert not driver.find_elements(By.ID, "cancel-run")
    _check_page(driver, "run-failed")
    _get(driver, server, "/ui/runs?q=" + seeded["quick"][5]["id"])
    assert _path(driver) == f"/ui/runs/{seeded['quick'][5]['run_id']}"
    _get(driver, server, "/ui/runs?q=" + "f" * 32)
    assert _path(driver) == "/ui/runs"
    _check_page(driver, "runs-search-miss")


def test_run_page_follows_the_run_live(server: Any, driver: Any,
                                       seeded: dict[str, Any]) -> None:
    alpha = seeded["alpha"]
    ds.login(driver, server.url, server.keys["alpha"])
    task = alpha.submit("live-dag", priority=100, name="live")
    _get(driver, server, f"/ui/runs/{task['run_id']}")
    live = driver.find_element(By.ID, "run-live")
    assert live.get_attribute("data-run-id") == task["run_id"]
    assert live.get_attribute("data-events-url") == f"/ui/runs/{task['run_id']}/events"
    assert live.get_attribute("data-ended") == "false"
    steps = {"nap", "e1", "e2", "e3", "chat"}
    nodes = driver.execute_script(
        "return [...document.querySelectorAll('svg#dag g.node')].map(g => g.dataset.step)")
    assert set(nodes) == steps
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg#dag path.edge")) == 5
    # record every state change of the DAG's nodes and all text of the deltas panel, and
    # mark the page (a reload would drop the mark)
    driver.execute_script("""
        window.__seen = {states: {}, deltas: '', marker: 'no reload'};
        const record = () => {
          for (const g of document.querySelectorAll('svg#dag g.node')) {
            const list = window.__seen.states[g.dataset.step] ||= [];
            if (list[list.length - 1] !== g.dataset.state) list.push(g.dataset.state);
          }
          const text = (document.getElementById('deltas') || {}).textContent || '';
          if (text.length > window.__seen.deltas.length) window.__seen.deltas = text;
        };
        record();
        new MutationObserver(record).observe(document.body,
          {subtree: true, childList: true, attributes: true, characterData: true});
    """)
    ds.wait_for(lambda: driver.execute_script("return window.flowyardLive !== undefined"), 10,
                message="window.flowyardLive (run.js)")
    applied_before = driver.execute_script("return window.flowyardLive.applied")
    ds.wait_for(lambda: "running" in driver.execute_script(
        "return window.__seen.states.nap || []"), 15, message="the sleep step running")
    ds.screenshot(driver, "run-live-running")
    seen = ds.wait_for(lambda: (lambda s: s if all(
        (s["states"].get(step) or ["?"])[-1] == "completed" for step in steps) else None)(
        driver.execute_script("return window.__seen")), 30,
        message=lambda: f"every node completed: {driver.execute_script('return window.__seen')}")
    assert seen["marker"] == "no reload"
    assert seen["states"]["nap"][-2:] == ["running", "completed"], seen["states"]
    for step in ("e1", "e2", "e3", "chat"):
        assert seen["states"][step][0] == "pending" and len(seen["states"][step]) >= 2, seen
    status = ds.wait_for(lambda: driver.find_element(By.ID, "run-status").get_attribute(
        "data-status") == "completed", 15, message="span#run-status completed, live")
    assert status
    live_state = driver.execute_script("""
        return {applied: window.flowyardLive.applied, lastSeq: window.flowyardLive.lastSeq,
                maxApplyMs: window.flowyardLive.maxApplyMs,
                bodySeq: document.body.dataset.lastEventSeq,
                events: document.querySelectorAll('#events-live > li').length,
                marker: window.__seen.marker};""")
    assert live_state["marker"] == "no reload"
    assert live_state["applied"] > applied_before, live_state
    assert live_state["lastSeq"] > 0 and live_state["bodySeq"] == str(live_state["lastSeq"])
    assert live_state["events"] > 0, live_state
    # the LLM step's answer streamed in as token deltas (the fake model echoes the prompt)
    final = driver.find_element(By.ID, "deltas").get_attribute("textContent")
    if len(final) > len(seen["deltas"]):
        seen["deltas"] = final
    assert "word0" in seen["deltas"] and "word39" in seen["deltas"], (seen, live_state)
    print("live:", live_state)
    # the run's details (outputs, steps, costs) are swapped in by htmx once it finished
    ds.wait_for(lambda: "word39" in driver.find_element(By.ID, "run-outputs").text, 10,
                message="the outputs in #run-details without a reload")
    assert driver.execute_script("return window.__seen.marker") == "no reload"
    assert driver.execute_script("return window.flowyardLive.errors") == 0
    ds.screenshot(driver, "run-live-completed")
    _check_page(driver, "run-live-completed")

    # after a reload the page shows the finished run from the storage
    assert alpha.wait_task(task["id"], {"completed"})["status"] == "completed"
    _get(driver, server, f"/ui/runs/{task['run_id']}")
    assert driver.find_element(By.ID, "run-live").get_attribute("data-ended") == "true"
    states = driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll('svg#dag g.node')]"
        ".map(g => [g.dataset.step, g.dataset.state]))")
    assert states == {step: "completed" for step in steps}
    assert "word39" in driver.find_element(By.ID, "run-outputs").text
    step_rows = {r["id"] for r in _rows(driver, "table#steps tr.step-row", "data-step")}
    assert step_rows == steps
    assert not driver.find_elements(By.ID, "cancel-run")
    assert not driver.find_elements(By.ID, "resume-run")
    assert "fake/echo" in driver.find_element(By.ID, "cost-lines").text
    _check_page(driver, "run-detail")
    response = _fetch(server, driver, f"/ui/runs/{task['run_id']}")
    assert response.status_code == 200
    _assert_security_headers(response)


def test_run_page_controls_follow_the_run_end(server: Any, driver: Any,
                                              seeded: dict[str, Any]) -> None:
    """A run that ends while its page is open no longer offers to cancel it (no reload)."""
    alpha = seeded["alpha"]
    alpha.register(SHORT_NAP)
    ds.login(driver, server.url, server.keys["alpha"])
    task = alpha.submit("short-nap", priority=100)
    _get(driver, server, f"/ui/runs/{task['run_id']}")
    assert driver.find_element(By.ID, "run-live").get_attribute("data-ended") == "false"
    assert driver.find_elements(By.ID, "cancel-run")
    driver.execute_script("window.__marker = 'no reload'")
    ds.wait_for(lambda: driver.find_element(By.ID, "run-status").get_attribute("data-status")
                == "completed", 20, message="the run completed, live")
    assert alpha.wait_task(task["id"], {"completed"})["status"] == "completed"
    time.sleep(1.0)  # whatever the page does at the end (htmx swaps) is done
    assert driver.execute_script("return window.__marker") == "no reload"
    ds.screenshot(driver, "run-ended-live")
    assert not [b for b in driver.find_elements(By.ID, "cancel-run") if b.is_displayed()], \
        "a run that ended while its page was open still shows button#cancel-run"


def test_cancel_and_resume_buttons(server: Any, driver: Any, seeded: dict[str, Any]) -> None:
    alpha = seeded["alpha"]
    ds.login(driver, server.url, server.keys["alpha"])
    task = alpha.submit("long-nap", priority=100, name="long nap")
    alpha.wait_task(task["id"], {"running"}, 30)
    run_page = f"/ui/runs/{task['run_id']}"
    _get(driver, server, run_page)
    _wait_status(driver, server, task["run_id"], {"running"})
    def nap_running() -> bool:
        node = driver.find_element(By.CSS_SELECTOR, 'svg#dag g.node[data-step="nap"]')
        if node.get_attribute("data-state") == "running":
            return True
        _get(driver, server, run_page)
        return False

    ds.wait_for(nap_running, 15, 0.5, message="the nap node running")
    assert not driver.find_elements(By.ID, "resume-run")
    form = driver.find_element(By.ID, "cancel-run").find_element(By.XPATH, "./ancestor::form")
    assert form.get_attribute("method").lower() == "post"
    assert form.find_element(By.CSS_SELECTOR, "input[type=hidden][name=csrf]").get_attribute(
        "value")
    ds.screenshot(driver, "run-cancellable")
    # the form's CSRF token is required
    for data in ({}, {"csrf": "not-the-token"}):
        forged = httpx.post(f"{server.url}/ui/runs/{task['run_id']}/cancel",
                            headers=_session(driver), data=data, timeout=30)
        assert forged.status_code == 403, forged.status_code
    assert alpha.task(task["id"])["status"] == "running"
    assert not alpha.task(task["id"])["cancel_requested"]
    driver.find_element(By.ID, "cancel-run").click()
    flash = ds.wait_for(lambda: driver.find_elements(By.ID, "flash"), 10, message="p#flash")
    assert "ancel" in flash[0].text
    _check_page(driver, "run-cancel-requested")
    assert alpha.wait_task(task["id"], {"cancelled", "failed", "completed"}, 30
                           )["status"] == "cancelled"
    assert _wait_status(driver, server, task["run_id"], {"cancelled"}) == "cancelled"
    # (run.js updates the status and the details live; the buttons come with a reload)
    _get(driver, server, run_page)
    assert driver.find_element(By.ID, "run-status").get_attribute("data-status") == "cancelled"
    assert driver.find_element(By.CSS_SELECTOR, 'svg#dag g.node[data-step="nap"]'
                               ).get_attribute("data-state") in ("cancelled", "failed")
    assert driver.find_element(By.ID, "run-live").get_attribute("data-ended") == "true"
    assert not driver.find_elements(By.ID, "cancel-run")
    _check_page(driver, "run-cancelled")

    driver.find_element(By.ID, "resume-run").click()
    flash = ds.wait_for(lambda: driver.find_elements(By.ID, "flash"), 10, message="p#flash")
    assert "resume" in flash[0].text.lower()
    resumed = alpha.wait_task(task["id"], {"queued", "running"}, 15)
    assert resumed["status"] in ("queued", "running")
    _get(driver, server, run_page)
    ds.wait_for(lambda: driver.find_elements(By.ID, "cancel-run"), 15,
                message="button#cancel-run on the resumed run")
    _check_page(driver, "run-resumed")
    # leave the worker free for the other tests
    alpha.cancel(task["id"])
    alpha.wait_task(task["id"], {"cancelled", "failed", "completed"}, 30)


def test_injected_text_stays_inert(server: Any, driver: Any, seeded: dict[str, Any]) -> None:
    alpha = seeded["alpha"]
    alpha.register(EVIL)
    task = alpha.submit(NAME_PAYLOAD, name=PAYLOAD, metadata={"note": PAYLOAD})
    agent = alpha.create_agent(name=PAYLOAD, instructions=PAYLOAD + ATTR_PAYLOAD,
                               capabilities=[NAME_PAYLOAD], type=ATTR_PAYLOAD)
    finished = alpha.wait_task(task["id"], {"completed", "failed"})
    assert finished["status"] == "completed", finished
    ds.login(driver, server.url, server.keys["alpha"])
    quote = urllib.parse.quote

    # the run's page: the workflow name, the step output, the log line
    _get(driver, server, f"/ui/runs/{task['run_id']}")
    assert NAME_PAYLOAD in driver.find_element(By.TAG_NAME, "h1").text
    assert PAYLOAD in driver.find_element(By.ID, "run-outputs").text
    assert PAYLOAD in driver.find_element(By.ID, "logs").text
    _check_page(driver, "injection-run")

    # the runs list: the workflow name in a row and in the filter's options
    _get(driver, server, "/ui/runs")
    row = next(r for r in _run_rows(driver) if r["id"] == task["run_id"])
    assert row["cells"][1] == NAME_PAYLOAD
    _check_page(driver, "injection-runs")
    _get(driver, server, "/ui/runs?workflow=" + quote(NAME_PAYLOAD))
    assert [r["id"] for r in _run_rows(driver)] == [task["run_id"]]
    assert Select(driver.find_element(By.CSS_SELECTOR, "#run-filters select[name=workflow]")
                  ).first_selected_option.get_attribute("value") == NAME_PAYLOAD
    _check_page(driver, "injection-runs-workflow-filter")

    # query parameters: the search box, the status, the page number, a flash message
    for name, query in (
            ("q", "q=" + quote(PAYLOAD)),
            ("q-attr", "q=" + quote(ATTR_PAYLOAD)),
            ("status-page", f"status={quote(ATTR_PAYLOAD)}&page={quote(PAYLOAD)}"
                            f"&workflow={quote(ATTR_PAYLOAD)}"),
            ("flash", "flash=" + quote(PAYLOAD))):
        _get(driver, server, "/ui/runs?" + query)
        assert _path(driver) == "/ui/runs"
        if name == "q":
            assert driver.find_element(By.CSS_SELECTOR, "#run-filters input[name=q]"
                                       ).get_attribute("value") == PAYLOAD[:64]
        if name == "flash":
            assert driver.find_element(By.ID, "flash").text == PAYLOAD
        _check_page(driver, f"injection-runs-query-{name}")
    for path in (f"/ui/tasks?status={quote(PAYLOAD)}&page={quote(ATTR_PAYLOAD)}",
                 f"/ui/costs?days={quote(PAYLOAD)}",
                 f"/ui/runs/{quote(NAME_PAYLOAD)}",
                 f"/ui/runs/{task['run_id']}?flash={quote(ATTR_PAYLOAD)}"):
        _get(driver, server, path)
        _assert_inert(driver)
        errors = _console_errors(driver, 404 if path.startswith("/ui/runs/%3C") else None)
        assert not errors, (path, errors)

    # the tasks page: the task name and target
    _get(driver, server, "/ui/tasks")
    row = next(r for r in _rows(driver, "#tasks tr.task-row", "data-task-id")
               if r["id"] == task["id"])
    assert PAYLOAD in row["text"] and NAME_PAYLOAD in row["text"]
    _check_page(driver, "injection-tasks")

    # the agents page: the agent's name, type, capabilities and instructions
    _get(driver, server, "/ui/agents")
    row = next(r for r in _rows(driver, "#agents tr.agent-row", "data-agent-id")
               if r["id"] == agent["id"])
    assert PAYLOAD in row["text"] and ATTR_PAYLOAD in row["text"], row
    _check_page(driver, "injection-agents")

    # nothing of it reached the DOM as markup
    for path in ("/ui/runs", f"/ui/runs/{task['run_id']}", "/ui/tasks", "/ui/agents"):
        _get(driver, server, path)
        injected = driver.execute_script(
            "return document.querySelectorAll('img[src=x], main script, svg[onload], "
            "[onerror], [onload]').length")
        assert injected == 0, path


def test_tenants_see_only_their_own_data(server: Any, driver: Any,
                                         seeded: dict[str, Any]) -> None:
    alpha_runs = {t["run_id"] for t in (*seeded["quick"], *seeded["broken"], seeded["priced"])}
    alpha_tasks = {t["id"] for t in (*seeded["quick"], *seeded["broken"], seeded["priced"])}
    ds.login(driver, server.url, server.keys["beta"])
    assert driver.find_element(By.ID, "tenant").text == "beta"

    rows = _run_rows(driver)
    assert {r["id"] for r in rows} == {t["run_id"] for t in seeded["beta_tasks"]}
    assert not driver.find_elements(By.ID, "next-page")
    workflows = Select(driver.find_element(By.CSS_SELECTOR,
                                           "#run-filters select[name=workflow]"))
    assert [o.get_attribute("value") for o in workflows.options if o.get_attribute("value")
            ] == ["beta-only"]
    _check_page(driver, "tenant-beta-runs")
    _get(driver, server, "/ui/runs?workflow=quick")
    assert not _run_rows(driver)
    _get(driver, server, "/ui/runs?status=completed&page=2")
    assert not _run_rows(driver)

    _get(driver, server, "/ui/tasks")
    task_ids = {r["id"] for r in _rows(driver, "#tasks tr.task-row", "data-task-id")}
    assert task_ids == {t["id"] for t in seeded["beta_tasks"]}
    assert not task_ids & alpha_tasks
    _check_page(driver, "tenant-beta-tasks")

    _get(driver, server, "/ui/agents")
    agents = _rows(driver, "#agents tr.agent-row", "data-agent-id")
    assert [a["id"] for a in agents] == [seeded["beta_agent"]["id"]]
    assert "alpha-helper" not in driver.find_element(By.TAG_NAME, "body").text
    _check_page(driver, "tenant-beta-agents")

    # alpha's run: a 404 page, its events too; searching for it finds nothing
    alpha_run = seeded["quick"][0]["run_id"]
    _get(driver, server, f"/ui/runs/{alpha_run}")
    assert _path(driver) == f"/ui/runs/{alpha_run}"
    assert not driver.find_elements(By.ID, "run-live")
    assert "Not found" in driver.find_element(By.TAG_NAME, "h1").text
    assert driver.find_element(By.ID, "error-message").text
    body = driver.find_element(By.TAG_NAME, "body").text
    assert "quick" not in body and "number 0" not in body
    _check_page(driver, "tenant-beta-404", status=404)
    assert _fetch(server, driver, f"/ui/runs/{alpha_run}").status_code == 404
    assert _fetch(server, driver, f"/ui/runs/{alpha_run}/events").status_code == 404
    _get(driver, server, "/ui/runs")
    csrf = driver.find_element(By.CSS_SELECTOR, 'meta[name="csrf-token"]').get_attribute(
        "content")
    assert csrf
    for action in ("cancel", "resume"):
        response = httpx.post(f"{server.url}/ui/runs/{alpha_run}/{action}",
                              headers=_session(driver), data={"csrf": csrf}, timeout=30)
        assert response.status_code == 404, (action, response.status_code)
    assert seeded["alpha"].task(seeded["quick"][0]["id"])["status"] == "completed"
    _get(driver, server, f"/ui/runs?q={alpha_run}")
    assert _path(driver) == "/ui/runs"
    _get(driver, server, f"/ui/runs?q={seeded['quick'][0]['id']}")
    assert _path(driver) == "/ui/runs"
    assert alpha_runs.isdisjoint({r["id"] for r in _run_rows(driver)})
    assert not _console_errors(driver)

    # no cost of alpha's runs: beta made no model call
    _get(driver, server, "/ui/costs")
    assert driver.find_elements(By.ID, "costs-empty")
    assert "priced" not in driver.find_element(By.TAG_NAME, "main").text
    _check_page(driver, "tenant-beta-costs")
    _get(driver, server, "/ui/providers")
    assert driver.find_elements(By.CSS_SELECTOR, '#providers tr.provider[data-provider="fake"]')
    _check_page(driver, "tenant-beta-providers")


def test_tasks_agents_costs_providers_pages(server: Any, driver: Any,
                                            seeded: dict[str, Any]) -> None:
    ds.login(driver, server.url, server.keys["alpha"])

    _get(driver, server, "/ui/tasks")
    rows = _rows(driver, "#tasks tr.task-row", "data-task-id")
    assert len(rows) == 50 and driver.find_elements(By.ID, "next-page")
    by_id = {r["id"]: r for r in rows}
    priced = seeded["priced"]
    assert priced["id"] in by_id and "priced-call" in by_id[priced["id"]]["text"]
    assert by_id[priced["id"]]["href"] == f"/ui/runs/{priced['run_id']}"
    _check_page(driver, "tasks")
    _get(driver, server, "/ui/tasks?status=failed")
    failed = {r["id"] for r in _rows(driver, "#tasks tr.task-row", "data-task-id")}
    assert failed >= {t["id"] for t in seeded["broken"]}
    _check_page(driver, "tasks-failed")

    _get(driver, server, "/ui/agents")
    agents = {r["id"]: r for r in _rows(driver, "#agents tr.agent-row", "data-agent-id")}
    helper = agents[seeded["agent"]["id"]]
    assert "alpha-helper" in helper["text"] and "Answer briefly." in helper["text"]
    assert "fake/echo" in helper["text"] and "summarize" in helper["text"]
    _check_page(driver, "agents")

    _get(driver, server, "/ui/costs")
    by_model = driver.find_element(By.CSS_SELECTOR, "svg#cost-by-model")
    by_workflow = driver.find_element(By.CSS_SELECTOR, "svg#cost-by-workflow")
    assert "priced" in by_model.get_attribute("textContent")
    assert "priced" in by_workflow.get_attribute("textContent")
    _check_page(driver, "costs")

    _get(driver, server, "/ui/providers")
    providers = {r["id"]: r for r in _rows(driver, "#providers tr.provider", "data-provider")}
    assert "fake" in providers, providers
    _check_page(driver, "providers")

    # every page: the header's links, the security headers, and its own page when followed
    for path in ("/ui/runs", "/ui/tasks", "/ui/agents", "/ui/costs", "/ui/providers",
                 f"/ui/runs/{priced['run_id']}"):
        response = _fetch(server, driver, path)
        assert response.status_code == 200, (path, response.status_code)
        assert response.headers["content-type"].startswith("text/html")
        _assert_security_headers(response)
    _get(driver, server, "/ui/runs")
    for href in _nav_links(driver):
        driver.find_element(By.CSS_SELECTOR, f'header nav a[href="{href}"]').click()
        ds.wait_for(lambda href=href: _path(driver) == href, 10, message=href)
        assert driver.find_element(By.CSS_SELECTOR, "header nav a.active").get_attribute(
            "href").endswith(href)
        _assert_inert(driver)
        assert not _console_errors(driver), href
    # the priced run's page lists its model call and cost
    _get(driver, server, f"/ui/runs/{priced['run_id']}")
    costs = driver.find_element(By.ID, "cost-lines").text
    assert "fake/priced" in costs and "$0.0000" in costs, costs
    _check_page(driver, "run-priced")
