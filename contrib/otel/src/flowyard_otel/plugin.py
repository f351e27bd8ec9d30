"""The plugin module named by the entry point: registers the ``otel.tracer`` event listener.

Configuration (``[otel]`` of ``flowyard.toml``, or ``FLOWYARD_OTEL__*``):

- ``enabled`` (bool): tracing on or off. Default: on when an exporter is configured
  (``exporter``, or the standard ``OTEL_TRACES_EXPORTER``, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or
  ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` environment variables), else off; off whenever
  ``OTEL_SDK_DISABLED=true``.
- ``exporter`` (``"otlp"``, ``"console"`` or ``"none"``): default ``OTEL_TRACES_EXPORTER``,
  else ``"otlp"``.
- ``capture_content`` (bool, default false): record prompt/completion content, redacted.
- ``content_max_chars`` (int, default 2000): characters kept of one content value.

The OTLP exporter is configured the standard way: ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``..._TRACES_ENDPOINT``), ``OTEL_EXPORTER_OTLP_PROTOCOL`` (or ``..._TRACES_PROTOCOL``:
``http/protobuf``, the default, or ``grpc``, which needs ``flowyard-otel[grpc]``),
``OTEL_EXPORTER_OTLP_HEADERS``, ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``...
"""

from __future__ import annotations

import os
from typing import Any

import flowyard

#: The batch span processor's queue (spans) and export batch size, unless
#: ``OTEL_BSP_MAX_QUEUE_SIZE`` / ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` say otherwise. Larger than
#: the SDK's 2048 and 512: one fan-out step of 1000 items makes 3000 spans at once (the SDK
#: drops spans beyond the queue), and each batch wakes the export thread, which costs the
#: engine's event loop more than the spans themselves (benchmarks/otel_overhead.py).
DEFAULT_MAX_QUEUE_SIZE = 16384
DEFAULT_MAX_EXPORT_BATCH_SIZE = 2048
_ENDPOINT_VARS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def _flag(value: Any, key: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off"):
        return False
    raise flowyard.ConfigError(f"[otel] {key} must be true or false, got {value!r}")


def settings(config: flowyard.Config, environ: Any = None) -> dict[str, Any]:
    """Resolve the ``[otel]`` settings against the standard ``OTEL_*`` variables.

    Args:
        config: the stack's configuration.
        environ: the environment (default ``os.environ``).

    Returns:
        ``{"enabled", "exporter", "protocol", "capture_content", "content_max_chars"}``.

    Raises:
        ConfigError: a key has the wrong type, or the exporter or protocol is unknown.
    """
    env = os.environ if environ is None else environ
    section = config.section("otel")
    exporter = str(section.get("exporter") or env.get("OTEL_TRACES_EXPORTER") or "otlp")
    exporter = exporter.strip().lower()
    if exporter not in ("otlp", "console", "none"):
        raise flowyard.ConfigError(f"[otel] exporter must be otlp, console or none, got "
                                   f"{exporter!r}")
    configured = ("exporter" in section or "OTEL_TRACES_EXPORTER" in env
                  or any(env.get(name) for name in _ENDPOINT_VARS))
    enabled = _flag(section["enabled"], "enabled") if "enabled" in section else configured
    if str(env.get("OTEL_SDK_DISABLED", "")).strip().lower() == "true":
        enabled = False
    protocol = str(env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                   or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf").strip()
    if protocol not in ("http/protobuf", "grpc"):
        raise flowyard.ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL must be http/protobuf or "
                                   f"grpc, got {protocol!r}")
    max_chars = section.get("content_max_chars", 2000)
    if isinstance(max_chars, bool) or not isinstance(max_chars, int) or max_chars < 0:
        raise flowyard.ConfigError(f"[otel] content_max_chars must be an integer >= 0, got "
                                   f"{max_chars!r}")
    return {"enabled": enabled and exporter != "none", "exporter": exporter,
            "protocol": protocol,
            "capture_content": _flag(section.get("capture_content", False), "capture_content"),
            "content_max_chars": max_chars}


def make_exporter(exporter: str, protocol: str) -> Any:
    """Build the span exporter.

    Args:
        exporter: ``"otlp"`` or ``"console"``.
        protocol: ``"http/protobuf"`` or ``"grpc"`` (for ``"otlp"``).

    Returns:
        the exporter; the OTLP ones read the standard ``OTEL_EXPORTER_OTLP_*`` variables.

    Raises:
        ConfigError: ``grpc`` without the ``grpc`` extra installed.
    """
    if exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError as exc:
            raise flowyard.ConfigError(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs the gRPC exporter: "
                "pip install 'flowyard-otel[grpc]'") from exc
        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def build_tracer(config: flowyard.Config, exporter: Any = None) -> Any:
    """Build the tracer listener of a stack: a ``BatchSpanProcessor`` on the configured
    exporter (queue and batch sizes: :data:`DEFAULT_MAX_QUEUE_SIZE`,
    :data:`DEFAULT_MAX_EXPORT_BATCH_SIZE` unless the ``OTEL_BSP_*`` variables are set), the
    resource from ``OTEL_SERVICE_NAME``/``OTEL_RESOURCE_ATTRIBUTES`` (service
    name ``flowyard`` by default).

    Args:
        config: the stack's configuration.
        exporter: a span exporter to use instead of the configured one.

    Returns:
        the :class:`~flowyard_otel.tracing.OtelTracer`.
    """
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from flowyard_otel.tracing import OtelTracer

    found = settings(config)
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: "flowyard"}
    sizes: dict[str, int] = {}  # flowyard's defaults where OTEL_BSP_* does not say
    if not os.environ.get("OTEL_BSP_MAX_QUEUE_SIZE"):
        sizes["max_queue_size"] = DEFAULT_MAX_QUEUE_SIZE
    if not os.environ.get("OTEL_BSP_MAX_EXPORT_BATCH_SIZE"):
        sizes["max_export_batch_size"] = DEFAULT_MAX_EXPORT_BATCH_SIZE
    processor = BatchSpanProcessor(
        exporter if exporter is not None else make_exporter(found["exporter"],
                                                            found["protocol"]), **sizes)
    return OtelTracer(processor, resource=Resource.create(attributes),
                      capture_content=found["capture_content"],
                      content_max_chars=found["content_max_chars"])


@flowyard.hookimpl
def register_event_listeners(register: Any, config: flowyard.Config) -> None:
    """Register ``otel.tracer`` when tracing is enabled (see the module docstring)."""
    if settings(config)["enabled"]:
        register("otel.tracer", factory=lambda: build_tracer(config))
