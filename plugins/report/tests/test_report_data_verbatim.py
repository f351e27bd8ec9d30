"""Data is never rendered as a template: values that reach ``report.write`` through a
workflow's inputs or step outputs come out verbatim, at any depth, and the inline template is
the step's literal template (issue 16, item 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flowyard.errors import ToolError
from flowyard_report.tool import ReportWriteTool, literal_template
from flowyard_safepath import SafeRoot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.anyio

PAYLOADS = ["{{ 7*7 }}", "{% for i in range(3) %}x{% endfor %}", "${inputs.secret}",
            "{{ ''.__class__ }}", "{% raw %}{{ 1 }}{% endraw %}", "$${x}", "{#c#}"]

INLINE = """\
name: verbatim
inputs:
  text: {type: string}
  nested: {type: any}
steps:
  - id: echo
    uses: echo
    with: {value: "{{ inputs.text }}"}
  - id: write
    uses: report.write
    with:
      path: out/r.md
      title: "T {{ inputs.text }}"
      data: {text: "${echo}", direct: "{{ inputs.text }}", nested: "{{ inputs.nested }}",
             mixed: "before ${echo} after"}
      template: "{{ title }}|{{ text }}|{{ direct }}|{{ nested | tojson }}|{{ mixed }}"
outputs:
  path: "${write.path}"
"""


@pytest.fixture
def root_dir(tmp_path: Path) -> Path:
    root = tmp_path / "r"
    root.mkdir()
    return root


async def _run(root_dir: Path, workflow: str, inputs: dict[str, Any]) -> Any:
    from flowyard.stack import Stack
    from flowyard_report import plugin

    stack = Stack(plugins=[("report", plugin)],
                  config={"storage": {"url": "memory://"},
                          "filesystem": {"root": str(root_dir), "fsync": False}})
    async with stack:
        return await stack.run(workflow, inputs)


async def test_template_syntax_in_an_input_reaches_the_report_verbatim(root_dir: Path) -> None:
    nested = {"a": ["{{ 7*7 }}", {"b": "${echo}", "c": ["{% if true %}y{% endif %}"]}],
              "{{ 6*6 }}": "k"}
    result = await _run(root_dir, INLINE, {"text": "{{ 7*7 }}", "nested": nested})
    assert result.status == "completed", result.error
    text = (root_dir / "out" / "r.md").read_text()
    title, plain, direct, dumped, mixed = text.split("|")
    assert title == "T {{ 7*7 }}"
    assert plain == direct == "{{ 7*7 }}"
    assert json.loads(dumped) == nested
    assert mixed == "before {{ 7*7 }} after"
    assert "49" not in text and "36" not in text


@pytest.mark.parametrize("payload", PAYLOADS)
async def test_every_payload_stays_verbatim(root_dir: Path, payload: str) -> None:
    result = await _run(root_dir, INLINE, {"text": payload, "nested": [[payload]]})
    assert result.status == "completed", result.error
    title, plain, direct, dumped, mixed = (root_dir / "out" / "r.md").read_text().split("|")
    assert title == f"T {payload}"
    assert plain == direct == payload
    assert json.loads(dumped) == [[payload]]
    assert mixed == f"before {payload} after"


async def test_inline_template_cannot_read_run_values_directly(root_dir: Path) -> None:
    workflow = INLINE.replace('template: "{{ title }}', 'template: "{{ inputs.text }}{{ title }}')
    result = await _run(root_dir, workflow, {"text": "{{ 7*7 }}", "nested": 1})
    assert result.status == "failed"
    assert "'inputs' is undefined" in str(result.error)
    assert "pass the run's values through `data`" in str(result.error)
    assert not (root_dir / "out" / "r.md").exists()


def test_a_template_wrapped_in_raw_as_a_whole_is_the_template_inside() -> None:
    assert literal_template("{% raw %}<h1>{{ title }}</h1>{% endraw %}") == "<h1>{{ title }}</h1>"
    assert literal_template("{%- raw -%}{{ a }}{%- endraw -%}") == "{{ a }}"
    both = "{% raw %}{{ a }}{% endraw %} {{ b }} {% raw %}{{ c }}{% endraw %}"
    assert literal_template(both) == both
    assert literal_template("x {% raw %}{{ a }}{% endraw %}") == "x {% raw %}{{ a }}{% endraw %}"


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.text(max_size=60),
       nested=st.recursive(st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=8))
def test_arbitrary_data_is_rendered_verbatim(tmp_path: Path, value: str, nested: Any) -> None:
    tool = ReportWriteTool(SafeRoot(tmp_path, fsync=False))
    text = tool.renderer.render(fmt="markdown", data={"value": value, "nested": nested},
                                template="<{{ value }}>{{ nested | tojson }}")
    assert text.startswith(f"<{value}>")
    assert json.loads(text[len(value) + 2:]) == nested



TOWER = "{{ ((((9**64)**64)**64)**64)**64 }}"
SLOW = ("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}"
        "{{ f(60) }}")


@pytest.mark.parametrize("template", [
    TOWER, "{{ 2 ** 100000 }}", "{{ 'x' * 100000000 }}",
    "{% for a in data %}{% for b in data %}{% for c in data %}{% endfor %}{% endfor %}"
    "{% endfor %}",
    "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
    "{% endfor %}",
    "{% set a = 'x' * 600000 %}{% set b = a ~ a %}{% set c = b ~ b %}",
    "{{ 'x' | center(1000000000) }}", "{{ '%0999999999d' % 1 }}", "{{ 'a'.ljust(10 ** 9) }}",
    "{% set s = 'x' * 900000 %}{{ [s, s] | string }}",
    "{% macro m() %}{% for i in range(9000) %}{% for j in range(9) %}" + "y" * 9000
    + "{% endfor %}{% endfor %}{% endmacro %}{{ m() | length }}",
], ids=["tower", "big-exponent", "string-repetition", "nested-loops-over-data",
        "namespace-doubling", "concat-doubling", "center", "format-width", "ljust",
        "nested-value-printed", "literal-text-in-macro"])
def test_hostile_report_templates_are_refused(tmp_path: Path, template: str) -> None:
    import time

    tool = ReportWriteTool(SafeRoot(tmp_path, fsync=False), max_range_items=100_000,
                           max_output_chars=1_000_000)
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"forbidden operation|exceeds 1000000 characters"):
        tool.renderer.render(fmt="markdown", data=list(range(1000)), template=template)
    assert time.monotonic() - started < 5


def test_report_render_stops_at_its_time_limit(tmp_path: Path) -> None:
    import time

    tool = ReportWriteTool(SafeRoot(tmp_path, fsync=False), max_range_items=10**9)
    started = time.monotonic()
    with pytest.raises(ToolError, match=r"time limit of 0\.5 s"):
        tool.renderer.render(fmt="markdown", data=None, template=SLOW, timeout=0.5)
    assert time.monotonic() - started < 2


async def test_a_slow_report_fails_within_the_step_timeout(root_dir: Path) -> None:
    import time

    workflow = f"""\
name: slow-report
timeout: 3
steps:
  - id: write
    uses: report.write
    timeout: 2
    with:
      path: out/slow.md
      template: "{SLOW}"
"""
    started = time.monotonic()
    result = await _run(root_dir, workflow, {})
    assert time.monotonic() - started < 5
    assert result.status == "failed"
    # the step's deadline or the render's work limit, whichever trips first on this machine
    assert ("time limit" in str(result.error)
            or "more than 1000000 loop iterations" in str(result.error)), result.error
    assert not (root_dir / "out" / "slow.md").exists()
