"""Hooks tested and documented by construction (datasette's test_plugin_hooks_have_tests and
test_plugin_hooks_are_documented), and the one table of hook families
(:data:`flowyard.hookspecs.HOOK_FAMILIES`) that the stack, the CLI and the docs follow.

``FLOWYARD_UPDATE_DOCS=1 pytest tests/core/test_hook_meta.py`` rewrites the generated families
table of ``docs/plugins.md`` from the table.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pluggy
import pytest

import flowyard.testing
from flowyard import hookspecs
from flowyard.interfaces import Services
from flowyard.registry import Registry
from flowyard.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "plugins.md"
TEST_FOLDERS = [ROOT / "tests", *ROOT.glob("plugins/*/tests"), *ROOT.glob("libs/*/tests")]
BEGIN = "<!-- hook-families: begin (generated from flowyard.hookspecs.HOOK_FAMILIES) -->"
END = "<!-- hook-families: end -->"


def _hookspecs() -> dict[str, tuple[str, ...]]:
    """Return ``hook name -> argument names`` as pluggy reads flowyard.hookspecs."""
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    specs = {}
    for name in dir(pm.hook):
        caller = getattr(pm.hook, name)
        if isinstance(caller, pluggy.HookCaller) and caller.spec is not None:
            specs[name] = tuple(caller.spec.argnames)
    return specs


HOOKS = _hookspecs()


def _test_sources() -> str:
    files = {p for folder in TEST_FOLDERS for pattern in ("test_*.py", "conftest.py")
             for p in folder.rglob(pattern) if ".venv" not in p.parts}
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(files))


def test_the_specs_are_found() -> None:
    assert len(HOOKS) == 14
    assert HOOKS["register_tools"] == ("register", "config", "services")
    assert HOOKS["register_commands"] == ("cli",)


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_plugin_hooks_have_tests(hook: str) -> None:
    """Every hook is named in at least one test file (test_*.py, conftest.py)."""
    assert re.search(rf"\b{hook}\b", _test_sources()), (
        f"no test under tests/, plugins/*/tests or libs/*/tests names {hook}")


@pytest.mark.parametrize("hook", sorted(HOOKS))
def test_plugin_hooks_are_documented(hook: str) -> None:
    """docs/plugins.md has a heading with the hook's exact signature."""
    signature = f"{hook}({', '.join(HOOKS[hook])})"
    headings = re.findall(r"^#{2,4} `([^`]+)`", DOCS.read_text(encoding="utf-8"), re.M)
    assert signature in headings, (
        f"docs/plugins.md has no heading `{signature}` (found: {headings})")


def test_every_hook_is_a_family_or_the_commands_hook() -> None:
    assert set(HOOKS) == {f.hook for f in hookspecs.HOOK_FAMILIES} | {hookspecs.COMMANDS_HOOK}
    assert set(hookspecs.HOOK_LABELS) == set(HOOKS)
    for table in ("name", "hook", "attribute", "kind"):
        values = [getattr(f, table) for f in hookspecs.HOOK_FAMILIES]
        assert len(values) == len(set(values)), f"duplicate {table} in HOOK_FAMILIES"
    assert hookspecs.FAMILIES == {f.name: f.hook for f in hookspecs.HOOK_FAMILIES}


def test_the_stack_builds_its_registries_from_the_table() -> None:
    stack = Stack(config={"storage": {"url": "memory://"}})
    for family in hookspecs.HOOK_FAMILIES:
        registry = getattr(stack, family.attribute)
        assert isinstance(registry, Registry)
        assert registry is stack.registry(family.name)
        assert registry.kind == family.kind
    with pytest.raises(KeyError, match="families: providers, tools"):
        stack.registry("nope")


def test_services_and_stack_declare_exactly_the_table_s_registries() -> None:
    """The static declarations type checkers read agree with the table."""
    attributes = {f.attribute for f in hookspecs.HOOK_FAMILIES}
    for cls in (Services, Stack):
        # the modules use postponed annotations, so these are the strings as written
        declared = {name for name, hint in cls.__annotations__.items()
                    if str(hint).startswith("Registry[")}
        assert declared == attributes, cls.__name__


def test_each_contract_suite_exists() -> None:
    for family in hookspecs.HOOK_FAMILIES:
        if family.contract:
            assert family.contract in flowyard.testing.__all__, family.contract
            assert isinstance(getattr(flowyard.testing, family.contract), type)


def render_families() -> str:
    """The families table of docs/plugins.md, rendered from HOOK_FAMILIES."""
    lines = [BEGIN, "",
             "| family | hook | registers | registered under | `Stack` registry | contract suite |",
             "|---|---|---|---|---|---|"]
    for f in hookspecs.HOOK_FAMILIES:
        contract = f"`{f.contract}`" if f.contract else "-"
        lines.append(f"| {f.name} | [`{f.hook}`](#{f.hook}{'-'.join(HOOKS[f.hook])}) | "
                     f"`{f.registers}` | {f.key} | `stack.{f.attribute}` | {contract} |")
    lines.append(f"| commands | [`{hookspecs.COMMANDS_HOOK}`](#register_commandscli) | "
                 "click commands on the `flowyard` group | command name | - | - |")
    lines += ["", END]
    return "\n".join(lines)


def test_docs_families_table_is_generated_from_the_table() -> None:
    text = DOCS.read_text(encoding="utf-8")
    assert BEGIN in text and END in text, f"docs/plugins.md lacks the {BEGIN} block"
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    expected = render_families()
    if text[start:stop] != expected and os.environ.get("FLOWYARD_UPDATE_DOCS") == "1":
        DOCS.write_text(text[:start] + expected + text[stop:], encoding="utf-8")
        return
    assert text[start:stop] == expected, (
        "docs/plugins.md's families table differs from flowyard.hookspecs.HOOK_FAMILIES; "
        "rerun with FLOWYARD_UPDATE_DOCS=1 to regenerate it")
