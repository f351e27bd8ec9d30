"""Hook implementations of ``flowyard-report`` (cheap to import: the tools are built on first
lookup): ``report.write`` and ``report.support``.

Configuration, table ``[report]`` of ``flowyard.toml`` (or ``FLOWYARD_REPORT__KEY``):

``root``              where templates are read and reports written (default: the
                      ``[filesystem] root``, else ``<data_dir>/workspace``)
``max_file_bytes``    largest report file, in bytes (default 50 MiB)
``max_total_bytes``   quota on all regular files under the root, in bytes (default 1 GiB)
``max_output_chars``  largest rendered report, in characters (default 20,000,000)
``max_range_items``   most items ``range()`` may produce per render, and most loop
                      iterations plus calls plus operators (default 1,000,000)
``fsync``             flush the report to disk before it replaces an old one (default true)
"""

from __future__ import annotations

from typing import Any

from flowyard import Config, ConfigError, Register, hookimpl

DEFAULT_LIMITS = {
    "max_file_bytes": 50 * 1024 * 1024,
    "max_total_bytes": 1024 * 1024 * 1024,
}


def _positive(table: dict[str, Any], key: str, default: int) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"[report] {key} must be a positive integer, got {value!r}")
    return value


@hookimpl
def register_tools(register: Register, config: Config) -> None:
    """Register ``report.write`` and ``report.support``.

    Raises:
        ConfigError: a ``[report]`` limit is not a positive integer.
    """
    table = config.section("report")
    max_output_chars = _positive(table, "max_output_chars", 20_000_000)
    max_range_items = _positive(table, "max_range_items", 1_000_000)

    def make() -> Any:
        from flowyard_safepath import safe_root_from_config

        from flowyard_report.tool import ReportWriteTool

        root = safe_root_from_config(config, "report", defaults=dict(DEFAULT_LIMITS))
        return ReportWriteTool(root, max_output_chars=max_output_chars,
                               max_range_items=max_range_items)

    register("report.write", factory=make)

    def make_support() -> Any:
        from flowyard_report.support_tool import ReportSupportTool

        return ReportSupportTool()

    register("report.support", factory=make_support)
