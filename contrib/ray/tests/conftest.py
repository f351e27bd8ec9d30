"""Fixtures of the flowyard-ray tests: one two-node Ray cluster per session, started with
``ray start --head`` and ``ray start --address`` (``flowyard_ray.testing.LocalCluster``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[Any]:
    """A two-node local Ray cluster (1 CPU per node); this process is connected to it as
    the driver. Its workers import the test tools (``ray_tools``) from this folder.
    """
    import ray
    from flowyard_ray.testing import LocalCluster

    pythonpath = os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)
    cluster = LocalCluster(nodes=2, num_cpus=1, env={"PYTHONPATH": pythonpath})
    cluster.start()
    try:
        ray.init(address=cluster.address, namespace="flowyard-tests", log_to_driver=False,
                 configure_logging=False)
        cluster.wait_nodes(2)
        yield cluster
    finally:
        ray.shutdown()
        cluster.stop()


@pytest.fixture(scope="session")
def ray_config(ray_cluster: Any) -> dict[str, Any]:
    """The configuration of a stack whose ``ray`` executor uses the session's cluster."""
    return {"storage": {"url": "memory://"},
            "plugins": {"enabled": ["builtin", "ray", "ray_tools"]},
            "ray": {"address": ray_cluster.address, "plugins": ["ray_tools"],
                    "namespace": "flowyard-tests"}}
