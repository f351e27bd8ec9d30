"""Plugin discovery through entry points, per-plugin guards, selection and strictness."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import flowyard
import pytest
from flowyard.errors import DuplicateNameError, PluginError, UnknownNameError
from flowyard.stack import Stack

VENV_BIN = Path(sys.executable).parent
# The test-only plugins (tests/plugins: testplugin, broken-import, broken-hook) are installed
# nowhere; this fixture (tests/conftest.py) makes them discoverable for these tests only.
pytestmark = pytest.mark.usefixtures("test_only_plugins")


def statuses(stack: Stack) -> dict[str, Any]:
    return {s.name: s for s in stack.plugin_report}


def test_default_stack_discovers_installed_plugins(flowyard_home: Path) -> None:
    stack = Stack.default()
    report = statuses(stack)
    assert report["builtin"].status == "loaded"
    assert report["testplugin"].status == "loaded"
    assert report["testplugin"].version == "0.0.1"
    assert report["testplugin"].distribution == "flowyard-testplugin"
    assert "register_tools" in report["testplugin"].hooks
    assert "testplugin.greet" in stack.tools
    assert "testfake" in stack.providers


def test_broken_plugins_are_reported_and_the_rest_works(flowyard_home: Path) -> None:
    stack = Stack.default()
    report = statuses(stack)
    assert report["broken-import"].status == "failed"
    assert "ImportError" in report["broken-import"].error
    assert "fails to import on purpose" in report["broken-import"].error
    assert report["broken-hook"].status == "failed"
    assert "RuntimeError" in report["broken-hook"].error
    # what the failing hook registered before raising is dropped
    assert "broken.half_registered" not in stack.tools
    assert stack.tools.get("testplugin.greet").name == "testplugin.greet"


def test_strict_mode_turns_a_broken_plugin_into_an_error(
    flowyard_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWYARD_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError, match="broken"):
        Stack.default()


def test_select_and_disable_plugins_by_environment(
    flowyard_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOWYARD_PLUGINS", "builtin,testplugin")
    report = statuses(Stack.default())
    assert report["testplugin"].status == "loaded"
    assert report["broken-import"].status == "disabled"
    monkeypatch.delenv("FLOWYARD_PLUGINS")
    monkeypatch.setenv("FLOWYARD_DISABLE_PLUGINS", "testplugin,broken-import,broken-hook")
    stack = Stack.default()
    assert statuses(stack)["testplugin"].status == "disabled"
    assert "testplugin.greet" not in stack.tools
    assert not stack.plugin_manager.failed()


def test_builtin_defaults_can_be_disabled_like_any_plugin(flowyard_home: Path) -> None:
    stack = Stack(config={"plugins": {"disabled": ["builtin"]}})
    assert statuses(stack)["builtin"].status == "disabled"
    assert "fake" not in stack.providers
    with pytest.raises(UnknownNameError, match="available: none"):
        stack.providers.get("fake")


def test_plugins_composed_in_code(flowyard_home: Path) -> None:
    @flowyard.tool(name="code.double")
    def double(x: int) -> int:
        """Double a number.

        Args:
            x: the number.
        """
        return 2 * x

    class CodePlugin:
        @flowyard.hookimpl
        def register_tools(self, register: Any) -> None:
            register("code.double", double)

    stack = Stack(plugins=[("code", CodePlugin())])
    assert stack.tools.get("code.double") is double
    assert stack.tools.plugin_of("code.double") == "code"


def test_duplicate_names_are_reported_not_dropped_silently(flowyard_home: Path) -> None:
    class First:
        @flowyard.hookimpl
        def register_tools(self, register: Any) -> None:
            register("dup.tool", "first")

    class Second:
        @flowyard.hookimpl
        def register_tools(self, register: Any) -> None:
            register("dup.tool", "second")

    stack = Stack(plugins=[("first", First()), ("second", Second())])
    assert stack.tools.get("dup.tool") == "first"
    [dup] = stack.duplicates
    assert (dup.kind, dup.name, dup.kept, dup.dropped) == ("tool", "dup.tool", "first", "second")
    with pytest.raises(PluginError, match="already registered"):
        Stack(plugins=[("first", First()), ("second", Second())],
              config={"plugins": {"strict": True}})
    assert issubclass(DuplicateNameError, Exception)


def test_two_stacks_do_not_interfere(flowyard_home: Path) -> None:
    class Extra:
        @flowyard.hookimpl
        def register_tools(self, register: Any) -> None:
            register("only.here", "x")

    with_extra = Stack(plugins=[("extra", Extra())])
    plain = Stack()
    assert "only.here" in with_extra.tools
    assert "only.here" not in plain.tools
    assert with_extra.providers.get("fake") is not plain.providers.get("fake")


def test_unknown_lookup_lists_what_is_available(flowyard_home: Path) -> None:
    stack = Stack.default()
    with pytest.raises(UnknownNameError) as info:
        stack.tools.get("nope.nothing")
    assert "testplugin.greet" in str(info.value)


def test_lazy_factories_are_built_once(flowyard_home: Path) -> None:
    built: list[int] = []

    class Lazy:
        @flowyard.hookimpl
        def register_providers(self, register: Any) -> None:
            def make() -> Any:
                built.append(1)
                from flowyard.builtin.fake import FakeProvider

                return FakeProvider(name="lazy")

            register("lazy", factory=make)

    stack = Stack(plugins=[("lazy", Lazy())])
    assert built == []
    assert stack.providers.get("lazy") is stack.providers.get("lazy")
    assert built == [1]


def test_trace_plugins_writes_hook_calls_to_stderr(flowyard_home: Path) -> None:
    env = {"FLOWYARD_TRACE_PLUGINS": "1", "PATH": str(VENV_BIN),
           "FLOWYARD_DATA_DIR": str(flowyard_home), "PYTHONPATH": os.environ["PYTHONPATH"]}
    out = subprocess.run([str(VENV_BIN / "flowyard"), "tools", "--json"], env=env,
                         capture_output=True, text=True, timeout=120, cwd=flowyard_home)
    assert out.returncode == 0, out.stderr
    assert "register_tools -> testplugin: 1 registered" in out.stderr


def test_cli_plugins_json_reports_defaults_test_and_broken_plugins(flowyard_home: Path) -> None:
    out = subprocess.run([str(VENV_BIN / "flowyard"), "plugins", "--json"], capture_output=True,
                         text=True, timeout=120, cwd=flowyard_home)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["builtin"]["status"] == "loaded"
    assert by_name["testplugin"]["status"] == "loaded"
    assert by_name["broken-import"]["status"] == "failed"
    assert "ImportError" in by_name["broken-import"]["error"]
    # the CLI keeps working, including a command added by a plugin
    hello = subprocess.run([str(VENV_BIN / "flowyard"), "testplugin-hello", "ada"],
                           capture_output=True, text=True, timeout=120, cwd=flowyard_home)
    assert hello.returncode == 0 and hello.stdout.strip() == "hello, ada!"
    version = subprocess.run([str(VENV_BIN / "flowyard"), "--version"], capture_output=True,
                             text=True, timeout=120)
    assert version.stdout.strip() == f"flowyard, version {flowyard.__version__}"


def test_cli_run_warns_about_failed_plugins_and_runs(flowyard_home: Path) -> None:
    workflow = flowyard_home / "one.yaml"
    workflow.write_text("name: one\nsteps:\n  - id: a\n    uses: testplugin.greet\n"
                        "    with: {name: ada}\noutputs: {greeting: '${a}'}\n")
    out = subprocess.run([str(VENV_BIN / "flowyard"), "run", str(workflow), "--json"],
                         capture_output=True, text=True, timeout=120, cwd=flowyard_home,
                         env={**os.environ, "FLOWYARD_STORAGE_URL": "memory://"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["outputs"] == {"greeting": "hello, ada!"}
    assert ("2 plugin(s) failed to load and are skipped: broken-hook, broken-import"
            in out.stderr)


def test_defaults_follow_default_priority_then_registration_order(flowyard_home: Path) -> None:
    class Providers:
        @flowyard.hookimpl
        def register_providers(self, register: Any) -> None:
            from flowyard.builtin.fake import FakeProvider

            register("low", FakeProvider("low"), default_model="low/echo", default_priority=1)
            register("high", FakeProvider("high"), default_model="high/echo", default_priority=5)
            register("tie", FakeProvider("tie"), default_model="tie/echo", default_priority=5)
            register("none", FakeProvider("none"), default_priority=99)  # offers no model

    stack = Stack(plugins=[("p", Providers())], config={"storage": {"url": "memory://"}})
    assert stack.llm.default_model() == "high/echo"
    assert stack.providers.preferred() == "none"
    assert stack.storage_schemes.preferred() == "memory"
    assert stack.storage_url() == "memory://"
