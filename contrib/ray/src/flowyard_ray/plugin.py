"""The plugin module named by the entry point: registers the ``ray`` executor.

Configuration: the ``[ray]`` table (see :func:`flowyard_ray.executor.settings`); a step
runs on Ray with ``executor: ray`` (or every step, with ``[engine] executor = "ray"``).
Nothing connects to Ray until a step uses the executor.
"""

from __future__ import annotations

import flowyard

from .executor import RayExecutor


@flowyard.hookimpl
def register_executors(register: flowyard.Register, config: flowyard.Config,
                       services: flowyard.Services) -> None:
    """Register :class:`~flowyard_ray.executor.RayExecutor` as ``ray``."""
    register("ray", factory=lambda: RayExecutor(config, services))


