"""flowyard-otel: OpenTelemetry traces of flowyard runs (spans per run, step, attempt, model
call and tool call), exported over OTLP (HTTP or gRPC)."""
