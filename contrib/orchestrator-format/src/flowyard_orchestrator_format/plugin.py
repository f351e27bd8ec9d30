"""Hook implementations of flowyard-orchestrator-format."""

from __future__ import annotations

from typing import Any

import flowyard
from flowyard import ParseLimits

from flowyard_orchestrator_format.filters import FILTERS, GLOBALS
from flowyard_orchestrator_format.loader import OrchestratorLoader


@flowyard.hookimpl
def register_workflow_loaders(register: Any, config: Any, services: Any) -> None:
    """Register the ``orchestrator`` loader for ``.yaml``/``.yml`` files it recognizes.

    Args:
        register: flowyard's registration function.
        config: the stack's configuration (its ``workflows.*`` parse limits apply).
        services: unused.
    """
    loader = OrchestratorLoader(ParseLimits.from_config(config))
    register("orchestrator", loader, suffixes=OrchestratorLoader.suffixes)


@flowyard.hookimpl
def register_template_filters(register: Any, config: Any, services: Any) -> None:
    """Register the template filters and globals Orchestrator pipelines use.

    Args:
        register: flowyard's registration function.
        config: unused.
        services: unused.
    """
    for name, function in FILTERS.items():
        register(name, function)
    for name, function in GLOBALS.items():
        register(name, function, kind="global")
