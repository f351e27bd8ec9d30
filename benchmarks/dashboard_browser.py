"""The dashboard in a real browser (headless Chromium via Selenium, as the browser tests):
how fast its pages paint with a lot of data, and whether the live run view keeps up.

Each figure comes with a baseline measured on the same server in the same run, so the ratios
do not depend on the machine:

(a) **Runs list with ``--tasks`` (10,000) tasks.** A ``flowyard serve --no-worker`` on a
    SQLite file gets ``--tasks`` tasks of a one-step workflow through ``POST /v1/tasks/batch``
    (they stay queued: only the list is measured). Logged in, the browser loads the runs list's
    first page, a late page (``--late-page``, default three quarters in: page 150, rows
    7,451-7,500), the first page
    filtered by status, and the baseline ``/ui/login`` (the same template, CSS and scripts,
    no data), ``--rounds`` times in turn. Reported per page (medians, ms from navigation
    start): time to first byte (the server's work), first paint, first contentful paint,
    DOMContentLoaded, load; and each page's FCP and DOMContentLoaded as a ratio of the
    baseline's.

(b) **A 1,000-step run, live.** ``--steps`` (1,000) echo steps ``s0..s999``, each depending
    on one or two earlier ones (seeded), run on the in-process worker of a second server. The
    browser opens the run's page as soon as the task is submitted (the SVG DAG of every step is
    drawn by the server) and follows it until the run ends. Reported: the page's time to first
    byte, first paint, FCP, size (decoded, and as sent) and element count (and the same page
    once the run has finished, from storage; and ``/ui/login`` as the baseline); the live
    view's own figures ``window.flowyardLive`` (events applied, the last event's sequence
    number, ``maxApplyMs``: the longest time one batch of events took to apply); how long
    after the task finished (server clock) the last DAG node turned completed in the page;
    and the main thread's long tasks (a ``PerformanceObserver`` of ``longtask`` entries,
    installed before the page's own scripts): the longest, their count and total time, while
    the page loaded (before DOMContentLoaded) and while it followed the run.

The servers run as child processes (``flowyard serve``), on loopback, with a throwaway data
directory; the browser is Debian's chromium with chromium-driver, nothing is downloaded.
A run takes about half a minute on two cores (seeding the 10,000 tasks about 8 s).

Usage::

    .venv/bin/python benchmarks/dashboard_browser.py [--tasks 10000] [--late-page 150]
        [--rounds 5] [--steps 1000] [--seed 7] [--only a|b]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _support() -> Any:
    path = Path(__file__).resolve().parents[1] / "tests" / "e2e" / "dashboard_support.py"
    spec = importlib.util.spec_from_file_location("flowyard_dashboard_support", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


ds = _support()

ONE_STEP = """\
name: bulk
inputs:
  n: {type: integer, default: 0}
steps:
  - id: one
    uses: echo
    with: {value: "task {{ inputs.n }}"}
"""
# Installed before any script of the page runs (CDP), so long tasks of the first parse and
# of run.js's start are seen too; also records when each DAG node last changed state.
OBSERVER = """
window.__bench = {longtasks: [], lastNodeChange: 0, nodeChanges: 0};
try {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries())
      window.__bench.longtasks.push({start: e.startTime, duration: e.duration});
  }).observe({type: 'longtask', buffered: true});
} catch (e) { window.__bench.error = String(e); }
document.addEventListener('DOMContentLoaded', () => {
  const dag = document.querySelector('svg#dag');
  if (!dag) return;
  new MutationObserver((records) => {
    for (const r of records) {
      if (r.attributeName === 'data-state') {
        window.__bench.nodeChanges += 1;
        window.__bench.lastNodeChange = performance.timeOrigin + performance.now();
      }
    }
  }).observe(dag, {subtree: true, attributes: true, attributeFilter: ['data-state']});
});
"""


def thousand_steps(n: int, seed: int) -> str:
    rng = random.Random(seed)
    lines = ["name: thousand", "max_concurrency: 8", "steps:"]
    for i in range(n):
        lines += [f"  - id: s{i}", "    uses: echo", f"    with: {{value: {i}}}"]
        if i:
            deps = {f"s{rng.randrange(max(0, i - 20), i)}"}
            if i > 1 and rng.random() < 0.5:
                deps.add(f"s{rng.randrange(0, i)}")
            lines.append(f"    depends_on: [{', '.join(sorted(deps))}]")
    return "\n".join(lines) + "\n"


def _median(values: list[float]) -> float:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else float("nan")


def _timings(driver: Any) -> dict[str, float]:
    return driver.execute_script("""
        const out = {};
        for (const e of performance.getEntriesByType('paint')) out[e.name] = e.startTime;
        const nav = performance.getEntriesByType('navigation')[0];
        out.ttfb = nav.responseStart; out.responseEnd = nav.responseEnd;
        out.dcl = nav.domContentLoadedEventEnd; out.load = nav.loadEventEnd;
        out.bytes = nav.decodedBodySize; out.wire = nav.transferSize;
        out.nodes = document.getElementsByTagName('*').length;
        return out;""")


def _load(driver: Any, url: str) -> dict[str, float]:
    driver.get(url)
    # paint entries appear a frame after load at most
    ds.wait_for(lambda: driver.execute_script(
        "return performance.getEntriesByType('paint').length >= 2 && "
        "performance.getEntriesByType('navigation')[0].loadEventEnd > 0"), 30, 0.02,
        message=f"paint entries of {url}")
    return _timings(driver)


def _row(label: str, t: dict[str, list[float]], base: dict[str, list[float]] | None) -> str:
    fcp, dcl = _median(t["first-contentful-paint"]), _median(t["dcl"])
    text = (f"  {label:<34} ttfb {_median(t['ttfb']):7.1f}  fp {_median(t['first-paint']):7.1f}"
            f"  fcp {fcp:7.1f}  dcl {dcl:7.1f}  load {_median(t['load']):7.1f}"
            f"  {_median(t['bytes']) / 1024:7.1f} KB  {int(_median(t['nodes'])):6d} elements")
    if base is not None:
        text += (f"   fcp x{fcp / _median(base['first-contentful-paint']):.2f}"
                 f"  dcl x{dcl / _median(base['dcl']):.2f}")
    return text


def _print_errors(driver: Any) -> None:
    errors = collections.Counter(re.sub(r"^https?://[^/ ]+", "", e)
                                 for e in ds.console_errors(driver))
    for text, count in errors.most_common(5):
        print(f"  console error x{count}: {text[:200]}")


def part_a(args: argparse.Namespace, driver: Any) -> None:
    print(f"(a) runs list with {args.tasks} queued tasks (flowyard serve --no-worker)")
    server = ds.Server(Path(tempfile.mkdtemp(prefix="fy-bench-ui-a-")), worker=False)
    try:
        server.create_key("bench")
        server.start()
        api = server.api("bench")
        api.register(ONE_STEP)
        started = time.perf_counter()
        api.submit_batch({"target": "bulk", "inputs": {"n": i}} for i in range(args.tasks))
        print(f"  seeded {args.tasks} tasks in {time.perf_counter() - started:.1f} s "
              "(POST /v1/tasks/batch, 100 each)")
        ds.login(driver, server.url, server.keys["bench"])
        pages = {"/ui/login (baseline)": "/ui/login",
                 "runs page 1": "/ui/runs",
                 f"runs page {args.late_page}": f"/ui/runs?page={args.late_page}",
                 "runs page 1, status=queued": "/ui/runs?status=queued",
                 "tasks page 1": "/ui/tasks"}
        results: dict[str, dict[str, list[float]]] = {
            k: {m: [] for m in ("ttfb", "first-paint", "first-contentful-paint", "dcl", "load",
                                "bytes", "nodes")} for k in pages}
        for path in pages.values():  # warm-up (template compilation, SQLite cache)
            _load(driver, server.url + path)
        for _ in range(args.rounds):
            for label, path in pages.items():
                timing = _load(driver, server.url + path)
                for metric, values in results[label].items():
                    values.append(timing.get(metric))
        rows = len(driver.execute_script("return document.querySelectorAll('tr.task-row')"))
        assert rows == 50, f"the tasks page shows {rows} rows"
        driver.get(server.url + f"/ui/runs?page={args.late_page}")
        rows = len(driver.execute_script("return document.querySelectorAll('tr.run-row')"))
        assert rows == 50, f"page {args.late_page} shows {rows} rows"
        print(f"  medians of {args.rounds} rounds, ms from navigation start (ratios: to the "
              "baseline)")
        base = results["/ui/login (baseline)"]
        for label in pages:
            print(_row(label, results[label], None if label.endswith("(baseline)") else base))
        _print_errors(driver)
    finally:
        server.stop()


def part_b(args: argparse.Namespace, driver: Any) -> None:
    print(f"(b) a {args.steps}-step run followed live (flowyard serve, in-process worker)")
    server = ds.Server(Path(tempfile.mkdtemp(prefix="fy-bench-ui-b-")), worker=True,
                       concurrency=2)
    try:
        server.create_key("bench")
        server.start()
        api = server.api("bench")
        api.register(thousand_steps(args.steps, args.seed))
        ds.login(driver, server.url, server.keys["bench"])
        baseline = _load(driver, server.url + "/ui/login")
        driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": OBSERVER})
        task = api.submit("thousand")
        page = f"{server.url}/ui/runs/{task['run_id']}"
        opened = time.time()
        live = _load(driver, page)
        nodes = driver.execute_script("return document.querySelectorAll('svg#dag g.node').length")
        finished = api.wait_task(task["id"], {"completed", "failed", "cancelled"}, 600)
        ran = finished["finished_at"] - (finished["started_at"] or finished["created_at"])

        def caught_up() -> Any:
            state = driver.execute_script("""
                const states = [...document.querySelectorAll('svg#dag g.node')]
                  .map(g => g.dataset.state);
                return {done: states.filter(s => s === 'completed').length,
                        status: (document.getElementById('run-status') || {dataset: {}})
                                  .dataset.status,
                        live: window.flowyardLive || null, bench: window.__bench};""")
            return state if state["done"] == nodes else None

        state = ds.wait_for(caught_up, 120, 0.1, message="every node completed in the page")
        time.sleep(1.0)  # let the last batches and observers settle
        state = caught_up() or state
        bench = state["bench"]
        loading = [t["duration"] for t in bench["longtasks"] if t["start"] < live["dcl"]]
        following = [t["duration"] for t in bench["longtasks"] if t["start"] >= live["dcl"]]
        lag = bench["lastNodeChange"] / 1000 - finished["finished_at"]
        done_page = _load(driver, page)
        print(f"  run: {finished['status']} in {ran:.1f} s on the worker; page opened "
              f"{opened - task['created_at']:.2f} s after submit (queued); {nodes} DAG nodes")
        print("  ms from navigation start:")
        for label, t in (("/ui/login (baseline)", baseline), ("run page, while running", live),
                         ("run page, finished", done_page)):
            ratio = "" if label.startswith("/ui/login") else (
                f"   fcp x{t['first-contentful-paint'] / baseline['first-contentful-paint']:.2f}")
            print(f"  {label:<26} ttfb {t['ttfb']:7.1f}  fp {t.get('first-paint', 0):7.1f}  "
                  f"fcp {t.get('first-contentful-paint', 0):7.1f}  dcl {t['dcl']:7.1f}  "
                  f"{t['bytes'] / 1024:7.1f} KB ({t['wire'] / 1024:.1f} KB sent)  "
                  f"{t['nodes']:6d} elements{ratio}")
        print(f"  live view (window.flowyardLive): {state['live']}")
        print(f"  DAG node state changes seen: {bench['nodeChanges']}; the last one "
              f"{lag * 1000:+.0f} ms after the task finished (server clock)")
        if "error" in bench:
            print(f"  longtask observer unavailable: {bench['error']}")
        else:
            for label, tasks in (("loading the page", loading),
                                 ("following the run", following)):
                print(f"  long tasks (>50 ms) {label}: {len(tasks)}, longest "
                      f"{max(tasks, default=0):.0f} ms, total {sum(tasks):.0f} ms")
        _print_errors(driver)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    parser.add_argument("--late-page", type=int, default=None,
                        help="default: three quarters into the list (150 of 200)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", choices=["a", "b"])
    args = parser.parse_args()
    if args.late_page is None:
        args.late_page = max(1, args.tasks // 50 * 3 // 4)
    chromium, driver_version = ds.check_browser()
    print(f"{chromium}; {driver_version.split(' (')[0]}; headless, {sys.platform}")
    driver = ds.make_driver()
    try:
        if args.only in (None, "a"):
            part_a(args, driver)
        if args.only in (None, "b"):
            part_b(args, driver)
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
