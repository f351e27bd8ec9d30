"""Helpers of the dashboard's browser tests (tests/e2e/test_dashboard_browser.py) and browser
benchmark (benchmarks/dashboard_browser.py): a real ``flowyard serve`` on a SQLite file with
API keys, seeding through the API with httpx, and a headless Chromium driven by Selenium.

The browser is Debian's ``chromium`` with its matching ``chromium-driver``
(scripts/system-deps.sh installs both), given to Selenium by explicit path, so Selenium Manager
never looks for (or downloads) a browser or a driver; its statistics are off
(``SE_AVOID_STATS``) and it is told to stay offline (``SE_OFFLINE``). Chromium itself resolves
no host name but the loopback ones (``--host-resolver-rules``) and has its background
networking (component updates, safe browsing, sync, metrics...) turned off, so nothing leaves
the machine.

Test modules cannot import ``conftest.py``; they load this module by its path
(:func:`load_support` in the test module), as the benchmark does.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
#: Where every screenshot of the browser tests lands (``out/`` is git-ignored).
ARTIFACTS = REPO / "out" / "test-artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
CLI = [sys.executable, "-c", "from flowyard.cli import main; main()"]

# Selenium Manager must never run (the explicit paths below make it unnecessary) and never
# phone home if something did start it.
os.environ["SE_AVOID_STATS"] = "true"
os.environ["SE_OFFLINE"] = "true"

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-breakpad",
    "--metrics-recording-only",
    "--no-pings",
    "--dns-prefetch-disable",
    "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,"
    "CertificateTransparencyComponentUpdater,InterestFeedContentSuggestions",
    # nothing but loopback resolves: no request can leave the machine
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1",
    "--password-store=basic",
    "--use-mock-keychain",
)


class BrowserMissing(RuntimeError):
    """Chromium or its driver is not installed (scripts/system-deps.sh installs both)."""


def check_browser() -> tuple[str, str]:
    """Return the versions of ``chromium`` and ``chromedriver``, or raise
    :class:`BrowserMissing` (the browser tests fail then, they do not skip).
    """
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        raise BrowserMissing(
            f"{' and '.join(missing)} missing: run scripts/system-deps.sh as root (it installs "
            "the Debian packages chromium and chromium-driver)")
    versions = []
    for path in (CHROMIUM, CHROMEDRIVER):
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=60,
                              check=False)
        versions.append(done.stdout.strip())
    major = [v.split()[1].split(".")[0] if len(v.split()) > 1 else "?" for v in versions]
    if major[0] != major[1]:
        raise BrowserMissing(f"chromium and chromedriver differ: {versions}")
    return versions[0], versions[1]


def make_driver(*, width: int = 1280, height: int = 1000) -> Any:
    """A headless Chromium under Selenium, with the browser console log enabled
    (``driver.get_log("browser")``).
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as ChromeService

    check_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    options.page_load_strategy = "normal"
    service = ChromeService(executable_path=CHROMEDRIVER, log_output=subprocess.DEVNULL)
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(60)
    driver.set_script_timeout(60)
    return driver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A ``flowyard serve`` child process on a SQLite file in ``tmp``, with the fake model
    ``fake/echo`` as default and short polling intervals (as tests/e2e/test_server_client.py).

    Args:
        tmp: a fresh directory (config, data, database, server log).
        worker: run the in-process worker (``--no-worker`` otherwise).
        concurrency: tasks the in-process worker runs at once.
    """

    def __init__(self, tmp: Path, *, worker: bool = True, concurrency: int = 4) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.worker = worker
        self.concurrency = concurrency
        (tmp / "flowyard.toml").write_text("")
        self.env = {
            **os.environ,
            "FLOWYARD_CONFIG": str(tmp / "flowyard.toml"),
            "XDG_CONFIG_HOME": str(tmp / "config"),
            "FLOWYARD_DATA_DIR": str(tmp / "data"),
            "FLOWYARD_STORAGE_URL": f"sqlite:///{tmp / 'dashboard.db'}",
            "FLOWYARD_DEFAULT_MODEL": "fake/echo",
            "FLOWYARD_PLUGINS": "builtin,server,sql",
            "FLOWYARD_SERVER__TASK_LEASE_TIMEOUT": "5",
            "FLOWYARD_SERVER__TASK_RENEW_INTERVAL": "0.3",
            "FLOWYARD_SERVER__POLL_INTERVAL": "0.2",
            "FLOWYARD_SERVER__SSE_POLL": "0.05",
            "FLOWYARD_SERVER__KEY_CACHE_SECONDS": "0.5",
            "FLOWYARD_RUNS__HEARTBEAT_INTERVAL": "0.3",
            "FLOWYARD_RUNS__LEASE_TIMEOUT": "5",
        }
        self.keys: dict[str, str] = {}
        self.process: subprocess.Popen[bytes] | None = None

    def command(self, *args: str) -> str:
        """Run a ``flowyard`` CLI command with the server's environment; return its stdout."""
        done = subprocess.run([*CLI, *args], env=self.env, capture_output=True, timeout=120,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError(f"flowyard {' '.join(args)} failed:\n{done.stderr.decode()}")
        return done.stdout.decode()

    def create_key(self, tenant: str) -> str:
        """Create an API key for ``tenant`` with ``flowyard api-keys create``; return it."""
        key = self.command("api-keys", "create", "--tenant", tenant).strip().splitlines()[-1]
        self.keys[tenant] = key
        return key

    def start(self, timeout: float = 60.0) -> None:
        """Start ``flowyard serve`` and wait until ``/v1/health/live`` answers."""
        import httpx

        args = ["serve", "--port", str(self.port), "--log-level", "warning",
                "--worker" if self.worker else "--no-worker"]
        if self.worker:
            args += ["--concurrency", str(self.concurrency)]
        with open(self.tmp / "serve.log", "wb") as log:
            self.process = subprocess.Popen([*CLI, *args], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(self.url + "/v1/health/live", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("flowyard serve did not start:\n" + self.log())
            time.sleep(0.1)

    def log(self) -> str:
        path = self.tmp / "serve.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def api(self, tenant: str) -> Api:
        """An API client acting for ``tenant`` (its key must exist)."""
        return Api(self.url, self.keys[tenant])


class Api:
    """The few ``/v1`` calls the tests seed data with (httpx, one connection pool)."""

    def __init__(self, url: str, key: str) -> None:
        import httpx

        self.http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"},
                                 timeout=60)

    def _ok(self, response: Any) -> Any:
        if response.status_code >= 400:
            raise AssertionError(f"{response.request.method} {response.request.url}: "
                                 f"{response.status_code} {response.text}")
        return response.json() if response.content else None

    def register(self, source: str) -> dict[str, Any]:
        return self._ok(self.http.post("/v1/workflows", json={"source": source}))

    def submit(self, target: str, inputs: dict[str, Any] | None = None, **fields: Any
               ) -> dict[str, Any]:
        return self._ok(self.http.post("/v1/tasks", json={"target": target,
                                                          "inputs": inputs or {}, **fields}))

    def submit_batch(self, specs: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
        """Submit any number of tasks, 100 per request."""
        specs = list(specs)
        out: list[dict[str, Any]] = []
        for start in range(0, len(specs), 100):
            out += self._ok(self.http.post("/v1/tasks/batch",
                                           json={"tasks": specs[start:start + 100]}))
        return out

    def task(self, task_id: str) -> dict[str, Any]:
        return self._ok(self.http.get(f"/v1/tasks/{task_id}"))

    def cancel(self, task_id: str) -> dict[str, Any]:
        return self._ok(self.http.post(f"/v1/tasks/{task_id}/cancel"))

    def create_agent(self, **body: Any) -> dict[str, Any]:
        return self._ok(self.http.post("/v1/agents", json=body))

    def wait_task(self, task_id: str, statuses: Iterable[str], timeout: float = 60.0
                  ) -> dict[str, Any]:
        """Poll the task until its status is one of ``statuses``; return it."""
        wanted = set(statuses)
        deadline = time.monotonic() + timeout
        while True:
            task = self.task(task_id)
            if task["status"] in wanted:
                return task
            if time.monotonic() > deadline:
                raise AssertionError(f"task {task_id} is {task['status']}, not {wanted} after "
                                     f"{timeout} s: {json.dumps(task)[:2000]}")
            time.sleep(0.1)

    def wait_tasks(self, task_ids: Iterable[str], statuses: Iterable[str],
                   timeout: float = 120.0) -> None:
        for task_id in task_ids:
            self.wait_task(task_id, statuses, timeout)

    def close(self) -> None:
        self.http.close()


# ---------------------------------------------------------------------------- browser helpers


def screenshot(driver: Any, name: str) -> Path:
    """Save a full-window screenshot as ``out/test-artifacts/dashboard/<name>.png`` and print
    its path.
    """
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    # make the window as tall as the page (up to a limit), so the screenshot shows all of it
    try:
        height = int(driver.execute_script(
            "return Math.min(6000, Math.max(document.body.scrollHeight, 600))"))
        width = int(driver.execute_script("return Math.max(window.outerWidth, 1280)"))
        driver.set_window_size(width, height + 140)
    except Exception:  # noqa: BLE001 - a screenshot is evidence, never the failure itself
        pass
    driver.save_screenshot(str(path))
    driver.set_window_size(1280, 1000)
    print(f"screenshot: {path}")
    return path


def browser_log(driver: Any) -> list[dict[str, Any]]:
    """The browser console entries since the last call (reading empties the log)."""
    return list(driver.get_log("browser"))


def console_errors(driver: Any) -> list[str]:
    """The SEVERE console entries (script errors, CSP violations, failed loads) since the
    last call.
    """
    return [entry["message"] for entry in browser_log(driver) if entry["level"] == "SEVERE"]


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05,
             message: str | Callable[[], str] = "condition") -> Any:
    """Call ``condition`` until it returns something truthy; return that (AssertionError on
    timeout).
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        try:
            value = condition()
        except Exception as exc:  # noqa: BLE001 - a stale element while the page changes
            value, last_error = None, exc
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"timed out after {timeout} s waiting for {text}"
                                 + (f" (last error: {last_error!r})" if last_error else ""))
        time.sleep(interval)


def login(driver: Any, url: str, key: str) -> None:
    """Log in through the login form with ``key`` (any session is dropped first); end on the
    runs list.
    """
    from selenium.webdriver.common.by import By

    driver.get(url + "/ui/login")
    driver.delete_all_cookies()
    driver.get(url + "/ui/login")
    field = driver.find_element(By.ID, "api-key")
    field.clear()
    field.send_keys(key)
    driver.find_element(By.ID, "login").click()
    wait_for(lambda: driver.current_url.split("?")[0].endswith("/ui/runs"), 20,
             message=lambda: f"the runs list after logging in (at {driver.current_url})")


def session_cookies(driver: Any) -> dict[str, str]:
    """The browser's cookies as a dict (HttpOnly ones included: WebDriver sees them)."""
    return {c["name"]: c["value"] for c in driver.get_cookies()}


def paint_timings(driver: Any) -> dict[str, float]:
    """first-paint, first-contentful-paint, domContentLoaded and load of the current page, in
    milliseconds from navigation start (``performance`` entries).
    """
    return driver.execute_script("""
        const out = {};
        for (const e of performance.getEntriesByType('paint')) out[e.name] = e.startTime;
        const nav = performance.getEntriesByType('navigation')[0];
        if (nav) {
          out.domContentLoaded = nav.domContentLoadedEventEnd;
          out.load = nav.loadEventEnd;
          out.responseEnd = nav.responseEnd;
          out.transferSize = nav.transferSize;
          out.decodedBodySize = nav.decodedBodySize;
        }
        return out;""")
