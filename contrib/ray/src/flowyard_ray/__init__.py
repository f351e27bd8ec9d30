"""flowyard-ray: a Ray executor for flowyard.

Steps that name ``executor: ray`` run on a Ray cluster: stateless steps as Ray tasks, steps
that keep state (``[ray] actor_tools``, by default ``llm.*``, ``agent`` and ``workflow``) on
async actors; each step's ``resources`` (``num_cpus``, ``num_gpus``, ``memory``, custom
names) place it. The workflow engine stays in the driver. See ``docs/plugins/ray.md``.
"""

from __future__ import annotations

from .executor import DEFAULT_ACTOR_TOOLS, RayExecutor, WorkerLostError, connect, settings

__all__ = ["DEFAULT_ACTOR_TOOLS", "RayExecutor", "WorkerLostError", "connect", "settings"]
