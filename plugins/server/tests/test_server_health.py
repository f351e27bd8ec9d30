"""/v1/health/ready includes the health checks plugins register (register_health_checks)."""

from __future__ import annotations

from typing import Any

import flowyard
from fastapi.testclient import TestClient
from flowyard import Stack
from flowyard.health import HealthResult
from flowyard_client import models as wire
from flowyard_server.app import create_app
from flowyard_server.settings import ServerSettings


class Plugin:
    status = "DEGRADED"

    @flowyard.hookimpl
    def register_health_checks(self, register: Any) -> None:
        async def gpu() -> HealthResult:
            return HealthResult(Plugin.status, "1 of 2 GPUs")

        register("gpu", gpu)


def _ready(status: str) -> tuple[int, wire.Health]:
    Plugin.status = status
    stack = Stack([("gpu-plugin", Plugin())],
                  config={"storage": {"url": "memory://"}, "models": {"default": "fake/echo"}})
    app = create_app(stack, ServerSettings(port=0))
    with TestClient(app) as client:
        response = client.get("/v1/health/ready")
    return response.status_code, wire.Health.model_validate(response.json())


def test_a_plugin_check_shows_in_ready() -> None:
    code, health = _ready("DEGRADED")
    assert code == 200 and health.status == "DEGRADED"
    assert health.checks["gpu"].status == "DEGRADED"
    assert health.checks["gpu"].detail == "1 of 2 GPUs"
    assert {"storage", "queue", "worker", "model", "disk", "gpu"} == set(health.checks)


def test_a_plugin_check_down_makes_ready_503() -> None:
    code, health = _ready("DOWN")
    assert code == 503 and health.status == "DOWN" and health.checks["gpu"].status == "DOWN"
