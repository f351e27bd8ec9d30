"""A plugin whose registration hook registers a tool and then raises: the tool must be dropped."""

from typing import Any

import flowyard


@flowyard.tool(name="broken.half_registered")
def half(x: int) -> int:
    """Never reachable: the hook that registers it fails.

    Args:
        x: a number.
    """
    return x


@flowyard.hookimpl
def register_tools(register: Any, config: Any) -> None:
    register("broken.half_registered", half)
    raise RuntimeError("flowyard-brokenplugin: register_tools fails on purpose")
