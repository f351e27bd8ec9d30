"""The dashboard's costs page: tenancy (a tenant sees its runs and their sub-runs, nothing of
another tenant), the window, the totals and tables, the server-drawn SVG charts and their
escaping, and the empty state.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
from flowyard import CostLine, RunRecord, Stack
from flowyard_server.app import RUNS_NAMESPACE, Service
from flowyard_server.settings import ServerSettings
from flowyard_server.ui import charts
from flowyard_server.ui.costs import costs_context, tenant_run_ids

pytestmark = pytest.mark.anyio

TEMPLATES = Path(__file__).resolve().parents[1] / "src" / "flowyard_server" / "ui" / "templates"
XSS = "<script>alert(1)</script>"
HOUR = 3600.0
DAY = 86400.0


def render(name: str, context: dict[str, Any]) -> str:
    """Render one of the dashboard's templates like the pages do (autoescape, strict)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    return env.get_template(name).render(session=None, nav=[], active="Costs", flash="",
                                         **context)


@pytest.fixture
async def svc() -> AsyncIterator[Service]:
    stack = Stack(config={"storage": {"url": "memory://"}, "models": {"default": "fake/echo"}})
    await stack.open()
    try:
        yield Service(stack, ServerSettings(), None)
    finally:
        await stack.aclose()


async def add_run(svc: Service, run_id: str, workflow: str, *, tenant: str | None = None,
                  parent: str | None = None) -> None:
    """A run record; in ``tenant``'s index when given (a submitted run), else a sub-run."""
    storage = svc.stack.storage
    await storage.create_run(RunRecord(
        id=run_id, workflow_name=workflow,
        metadata={"parent_run_id": parent} if parent else {}))
    if tenant is not None:
        await storage.kv_set(RUNS_NAMESPACE + tenant, run_id, "task-" + run_id)


async def cost(svc: Service, run_id: str, workflow: str, *, model: str = "priced",
               usd: float | None = 0.01, ago: float = 60.0, tokens: tuple[int, int] = (100, 50)
               ) -> None:
    await svc.stack.storage.add_cost(CostLine(
        run_id=run_id, provider="fake", model=model, input_tokens=tokens[0],
        output_tokens=tokens[1], cost_usd=usd, workflow_name=workflow, time=time.time() - ago))


async def two_tenants(svc: Service) -> None:
    """Tenant a: a root run, its child and grandchild. Tenant b: a root run and a child."""
    await add_run(svc, "a-root", "report", tenant="a")
    await add_run(svc, "a-child", "summarise", parent="a-root")
    await add_run(svc, "a-grandchild", "translate", parent="a-child")
    await add_run(svc, "b-root", "b-secret-workflow", tenant="b")
    await add_run(svc, "b-child", "b-secret-child", parent="b-root")
    await cost(svc, "a-root", "report", usd=0.25, tokens=(1000, 500))
    await cost(svc, "a-child", "summarise", model="echo", usd=0.0, tokens=(10, 5))
    await cost(svc, "a-grandchild", "translate", usd=0.5, tokens=(2000, 1000), ago=DAY)
    await cost(svc, "b-root", "b-secret-workflow", model="b-secret-model", usd=7.0)
    await cost(svc, "b-child", "b-secret-child", model="b-secret-model", usd=9.0)
    # a line of a run nobody indexed, and one of a run that does not exist
    await add_run(svc, "orphan", "orphan-workflow")
    await cost(svc, "orphan", "orphan-workflow", usd=3.0)
    await cost(svc, "missing", "missing-workflow", usd=4.0)


async def test_a_tenant_sees_its_runs_and_sub_runs_and_nothing_of_another(svc: Service) -> None:
    await two_tenants(svc)
    a = await costs_context(svc, "a", days=7)
    assert a["has_costs"]
    assert a["totals"]["calls"] == 3
    assert a["totals"]["runs"] == 3
    assert a["totals"]["cost_usd"] == pytest.approx(0.75)
    assert a["totals"]["input_tokens"] == 3010 and a["totals"]["output_tokens"] == 1505
    assert {r["name"] for r in a["by_workflow"]} == {"report", "summarise", "translate"}
    assert {r["name"] for r in a["by_model"]} == {"fake/priced", "fake/echo"}
    assert a["by_model"][0]["name"] == "fake/priced"  # most expensive first
    assert a["by_model"][0]["cost_usd"] == pytest.approx(0.75)
    html = render("costs.html", a)
    for foreign in ("b-secret", "orphan", "missing-workflow", "$7", "$9", "$16"):
        assert foreign not in html

    b = await costs_context(svc, "b", days=7)
    assert b["totals"]["cost_usd"] == pytest.approx(16.0)
    assert {r["name"] for r in b["by_workflow"]} == {"b-secret-workflow", "b-secret-child"}
    html_b = render("costs.html", b)
    for foreign in ("report", "summarise", "translate", "fake/priced"):
        assert foreign not in html_b

    nobody = await costs_context(svc, "c", days=7)
    assert not nobody["has_costs"] and nobody["totals"]["calls"] == 0


async def test_parent_links_that_loop_or_lead_nowhere_count_for_nobody(svc: Service) -> None:
    await add_run(svc, "a-root", "report", tenant="a")
    await add_run(svc, "loop-1", "loop", parent="loop-2")
    await add_run(svc, "loop-2", "loop", parent="loop-1")
    await add_run(svc, "lost", "lost", parent="gone")
    for run in ("loop-1", "loop-2", "lost"):
        await cost(svc, run, "x")
    await cost(svc, "a-root", "report")
    ctx = await costs_context(svc, "a", days=30)
    assert ctx["totals"]["calls"] == 1
    assert [r["name"] for r in ctx["by_workflow"]] == ["report"]


async def test_the_tenant_index_is_read_page_by_page(svc: Service) -> None:
    for i in range(1203):
        await svc.stack.storage.kv_set(RUNS_NAMESPACE + "a", f"run-{i:05d}", "t")
    await svc.stack.storage.kv_set(RUNS_NAMESPACE + "ab", "other", "t")
    ids = await tenant_run_ids(svc.stack.storage, "a")
    assert len(ids) == 1203 and "other" not in ids


async def test_the_window_keeps_the_last_days_and_days_1_is_hourly(svc: Service) -> None:
    await add_run(svc, "r", "wf", tenant="a")
    await cost(svc, "r", "wf", usd=1.0, ago=60)
    await cost(svc, "r", "wf", usd=2.0, ago=3 * DAY)
    await cost(svc, "r", "wf", usd=4.0, ago=40 * DAY)
    week = await costs_context(svc, "a", days=7)
    assert week["granularity"] == "day"
    assert week["totals"]["cost_usd"] == pytest.approx(3.0)
    assert len(re.findall(r">\d\d-\d\d</text>", str(week["chart_by_model"]))) == 7  # days
    day = await costs_context(svc, "a", days=1)
    assert day["granularity"] == "hour"
    assert day["totals"]["cost_usd"] == pytest.approx(1.0)
    assert len(re.findall(r">\d\d:00</text>", str(day["chart_by_model"]))) == 12  # every 2nd
    year = await costs_context(svc, "a", days=366)
    assert year["totals"]["cost_usd"] == pytest.approx(7.0)
    # out of range: clamped
    assert (await costs_context(svc, "a", days=0))["days"] == 1
    assert (await costs_context(svc, "a", days=10_000))["days"] == 366


async def test_unknown_prices_count_as_calls_not_as_dollars(svc: Service) -> None:
    await add_run(svc, "r", "wf", tenant="a")
    await cost(svc, "r", "wf", model="unpriced", usd=None, tokens=(7, 3))
    await cost(svc, "r", "wf", usd=0.5)
    ctx = await costs_context(svc, "a", days=7)
    assert ctx["totals"]["calls"] == 2
    assert ctx["totals"]["unknown_price_calls"] == 1
    assert ctx["totals"]["cost_usd"] == pytest.approx(0.5)
    html = render("costs.html", ctx)
    assert 'id="unknown-prices"' in html and "1 call had no known price" in html


async def test_charts_are_svg_with_dollar_axes_legend_and_tooltips(svc: Service) -> None:
    await add_run(svc, "r", "wf", tenant="a")
    await cost(svc, "r", "summarise", usd=0.02)
    await cost(svc, "r", "summarise", model="echo", usd=0.01, ago=2 * DAY)
    await cost(svc, "r", "report", usd=0.03, ago=DAY)
    ctx = await costs_context(svc, "a", days=7)
    html = render("costs.html", ctx)
    for svg_id in ("cost-by-model", "cost-by-workflow"):
        match = re.search(rf'<svg id="{svg_id}".*?</svg>', html, re.S)
        assert match, svg_id
        svg = match.group(0)
        segments = re.findall(r'<rect class="series-(\d)"[^>]*fill="#[0-9a-f]{6}"[^>]*>'
                              r"<title>([^<]*)</title></rect>", svg)
        assert len(segments) == 3  # one per (bar, series)
        assert all("$" in title for _, title in segments)
        assert re.search(r">\$0\.0\d+</text>", svg)  # y axis in US dollars
        assert "US dollars" in svg
        assert 'class="legend"' in svg
    model_svg = re.search(r'<svg id="cost-by-model".*?</svg>', html, re.S).group(0)  # type: ignore[union-attr]
    assert "fake/priced · " in model_svg and "fake/echo ($0.01)" in model_svg
    # the page's tables
    assert 'id="costs-by-model"' in html and 'id="costs-by-workflow"' in html
    assert 'id="total-cost">$0.06<' in html


async def test_user_strings_are_escaped_everywhere(svc: Service) -> None:
    await add_run(svc, "r", XSS, tenant="a")
    await cost(svc, "r", XSS, usd=0.1)
    await svc.stack.storage.add_cost(CostLine(
        run_id="r", provider="fake", model='"><img src=x onerror=alert(1)>', input_tokens=1,
        output_tokens=1, cost_usd=0.2, workflow_name=XSS, time=time.time()))
    ctx = await costs_context(svc, "a", days=7)
    html = render("costs.html", ctx)
    assert XSS not in html and "<img" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "onerror=alert(1)&gt;" in html  # shown, as text
    # the page stays within the CSP: no inline script, no style attribute
    assert "style=" not in html
    assert re.findall(r"<script(?![^>]*\bsrc=)", html) == []


async def test_no_costs_shows_the_empty_state(svc: Service) -> None:
    await add_run(svc, "r", "wf", tenant="a")
    ctx = await costs_context(svc, "a", days=7)
    assert not ctx["has_costs"]
    assert ctx["chart_by_model"] is None and ctx["chart_by_workflow"] is None
    html = render("costs.html", ctx)
    assert 'id="costs-empty"' in html and "<svg" not in html


# ----------------------------------------------------------------------------- charts.py


def test_format_usd_keeps_small_amounts_readable() -> None:
    assert charts.format_usd(0) == "$0"
    assert charts.format_usd(0.0042) == "$0.0042"
    assert charts.format_usd(0.000123456) == "$0.000123"
    assert charts.format_usd(0.05) == "$0.05"
    assert charts.format_usd(0.5) == "$0.50"
    assert charts.format_usd(12.5) == "$12.50"
    assert charts.format_usd(1234.4) == "$1,234"
    assert charts.format_usd(-0.5) == "-$0.50"


def test_nice_ticks_are_round_and_cover_the_maximum() -> None:
    assert charts.nice_ticks(0.75) == [0.0, 0.2, 0.4, 0.6, 0.8]
    assert charts.nice_ticks(16) == [0.0, 5.0, 10.0, 15.0, 20.0]
    assert charts.nice_ticks(0)[-1] > 0
    for maximum in (0.00037, 0.9, 1, 3.3, 99, 12345):
        ticks = charts.nice_ticks(maximum)
        assert ticks[0] == 0 and ticks[-1] >= maximum and len(ticks) <= 7


def test_a_chart_draws_at_most_ten_series_and_sums_the_rest() -> None:
    series = {f"model-{i:02d}": [float(i + 1), 0.0] for i in range(14)}
    svg = str(charts.stacked_bar_chart("c", "t", ["a", "b"], series))
    classes = set(re.findall(r'class="(series-\d+)"', svg))
    assert classes == {f"series-{i}" for i in range(10)}
    assert f"{charts.OTHER} (5 more)" in svg
    assert "model-13" in svg and "model-00" not in svg  # the largest kept, the smallest summed
    with pytest.raises(ValueError):
        charts.stacked_bar_chart("c", "t", ["a", "b"], {"x": [1.0]})


def test_a_chart_escapes_its_id_title_labels_and_names() -> None:
    svg = str(charts.stacked_bar_chart('x"y', XSS, [XSS], {XSS: [1.0]}, bucket_names=[XSS]))
    assert "<script" not in svg and 'x"y' not in svg
    assert svg.count("&lt;script&gt;") >= 4
