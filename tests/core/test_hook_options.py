"""Registration hooks: opt-in ``services``, tryfirst/trylast ordering, wrappers refused."""

from __future__ import annotations

from typing import Any

import pytest

from flowyard import hookimpl
from flowyard.errors import PluginError
from flowyard.interfaces import Services
from flowyard.stack import Stack

MEMORY = {"storage": {"url": "memory://"}}


class WantsServices:
    seen: Any = None

    @hookimpl
    def register_tools(self, register: Any, config: Any, services: Services) -> None:
        WantsServices.seen = services


class OldStyle:
    @hookimpl
    def register_providers(self, register: Any, config: Any) -> None:
        from flowyard.builtin.fake import FakeProvider

        register("old", FakeProvider("old"))


def _named(value: str, **opts: Any) -> Any:
    class Plugin:
        @hookimpl(**opts)
        def register_executors(self, register: Any, config: Any) -> None:
            register("x", value)

    return Plugin()


class Wrapper:
    @hookimpl(wrapper=True)
    def register_tools(self, register: Any, config: Any) -> Any:
        return (yield)


def test_services_is_opt_in_and_old_implementations_keep_working() -> None:
    stack = Stack([("wants", WantsServices()), ("old", OldStyle())], config=MEMORY)
    assert WantsServices.seen is stack and isinstance(stack, Services)
    assert "old" in stack.providers


def test_tryfirst_and_trylast_order_the_calls() -> None:
    stack = Stack([("a", _named("a", trylast=True)), ("b", _named("b")),
                   ("c", _named("c", tryfirst=True))], config=MEMORY)
    assert stack.executors.get("x") == "c"  # first registration wins a tie
    assert stack.executors.plugin_of("x") == "c"


def test_a_wrapper_on_a_registration_hook_is_refused_with_a_clear_error() -> None:
    stack = Stack([("wrapping", Wrapper())], config=MEMORY)
    [status] = [s for s in stack.plugin_report if s.name == "wrapping"]
    assert status.status == "failed"
    assert "plugin 'wrapping': hook 'register_tools' is marked wrapper=True" in status.error
    with pytest.raises(PluginError, match="'wrapping'.*register_tools.*wrapper=True"):
        Stack([("wrapping", Wrapper())], config={**MEMORY, "plugins": {"strict": True}})
