"""Configuration: ``flowyard.toml`` files, ``FLOWYARD_*`` environment variables and code.

Precedence, highest first:

1. values given in code (``Stack(config={...})`` or ``Config.load(overrides=...)``);
2. environment variables: ``FLOWYARD_SECTION__KEY=value`` sets ``section.key``, and
   ``FLOWYARD_A__B__C`` sets ``a.b.c`` (the value is parsed as TOML when it parses, else kept
   as a string), plus the named variables below;
3. the project file: ``$FLOWYARD_CONFIG`` when set, else ``./flowyard.toml``;
4. the user file: ``flowyard.toml`` in the user config directory (platformdirs,
   ``~/.config/flowyard/flowyard.toml`` on Linux);
5. built-in defaults.

Tables merge key by key; a scalar at a higher level replaces the one below.

Named environment variables:

``FLOWYARD_CONFIG``           path of the project file
``FLOWYARD_DATA_DIR``         where databases, vector stores and reports go
                              (default: the platformdirs user data directory)
``FLOWYARD_STORAGE_URL``      ``storage.url``
``FLOWYARD_DEFAULT_MODEL``    ``models.default``
``FLOWYARD_PLUGINS``          comma-separated plugin names to load (all when unset)
``FLOWYARD_DISABLE_PLUGINS``  comma-separated plugin names to skip
``FLOWYARD_STRICT_PLUGINS``   ``1``: a failing plugin is an error instead of a report
``FLOWYARD_TRACE_PLUGINS``    ``1``: trace every hook call to stderr
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flowyard.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = ["Config", "ENV_PREFIX"]

ENV_PREFIX = "FLOWYARD_"

_NAMED_ENV = {
    "FLOWYARD_STORAGE_URL": ("storage", "url"),
    "FLOWYARD_DEFAULT_MODEL": ("models", "default"),
    "FLOWYARD_DATA_DIR": ("paths", "data_dir"),
}
_FLAG_ENV = {
    "FLOWYARD_PLUGINS": ("plugins", "enabled"),
    "FLOWYARD_DISABLE_PLUGINS": ("plugins", "disabled"),
    "FLOWYARD_STRICT_PLUGINS": ("plugins", "strict"),
    "FLOWYARD_TRACE_PLUGINS": ("plugins", "trace"),
}
_NOT_SECTIONS = {"CONFIG"}


def _merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(dict(value)) if isinstance(value, Mapping) else value
    return base


def _parse_env_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _truthy(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


def _names(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list):
        return [str(v) for v in value]
    raise ConfigError(f"expected a list of plugin names, got {value!r}")


class Config:
    """The merged configuration of one stack.

    Args:
        data: the merged tables.
        sources: the files that were read, highest precedence first.
    """

    def __init__(self, data: Mapping[str, Any] | None = None, *, sources: list[str] | None = None
                 ) -> None:
        self.data: dict[str, Any] = copy.deepcopy(dict(data or {}))
        self.sources = list(sources or [])

    # ------------------------------------------------------------------ loading

    @staticmethod
    def read_file(path: Path) -> dict[str, Any]:
        """Parse one TOML file.

        Raises:
            ConfigError: the file cannot be read or is not valid TOML (message names the file
                and the line).
        """
        try:
            with open(path, "rb") as fh:
                return tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read configuration: {exc.strerror}") from exc

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        user_config_dir: Path | None = None,
    ) -> Config:
        """Build the configuration from files, environment and ``overrides``.

        Args:
            overrides: tables given in code (highest precedence).
            env: the environment to read (``os.environ`` by default).
            cwd: where to look for ``flowyard.toml`` (the current directory by default).
            user_config_dir: the user config directory (platformdirs' by default).

        Raises:
            ConfigError: a file is unreadable or invalid, or ``FLOWYARD_CONFIG`` names a file
                that does not exist.
        """
        env = os.environ if env is None else env
        data: dict[str, Any] = {}
        sources: list[str] = []

        if user_config_dir is None:
            import platformdirs

            user_config_dir = Path(platformdirs.user_config_dir("flowyard"))
        user_file = user_config_dir / "flowyard.toml"
        if user_file.is_file():
            _merge(data, cls.read_file(user_file))
            sources.insert(0, str(user_file))

        explicit = env.get("FLOWYARD_CONFIG")
        project_file = Path(explicit) if explicit else (cwd or Path.cwd()) / "flowyard.toml"
        if explicit and not project_file.is_file():
            raise ConfigError(f"FLOWYARD_CONFIG names {project_file}, which is not a file")
        if project_file.is_file():
            _merge(data, cls.read_file(project_file))
            sources.insert(0, str(project_file))

        env_data: dict[str, Any] = {}
        for name, raw in env.items():
            if not name.startswith(ENV_PREFIX):
                continue
            if name in _NAMED_ENV:
                section, key = _NAMED_ENV[name]
                env_data.setdefault(section, {})[key] = raw
            elif name in _FLAG_ENV:
                section, key = _FLAG_ENV[name]
                env_data.setdefault(section, {})[key] = raw
            elif "__" in name:
                parts = [p.lower() for p in name[len(ENV_PREFIX):].split("__")]
                if parts[0].upper() in _NOT_SECTIONS or not all(parts):
                    continue
                node = env_data
                for part in parts[:-1]:
                    node = node.setdefault(part, {})
                    if not isinstance(node, dict):
                        raise ConfigError(f"environment variable {name}: {part!r} is set both "
                                          "as a value and as a table")
                node[parts[-1]] = _parse_env_value(raw)
        _merge(data, env_data)
        if overrides:
            _merge(data, overrides)
        return cls(data, sources=sources)

    # ------------------------------------------------------------------ access

    def get(self, dotted: str, default: Any = None) -> Any:
        """Return the value at ``"section.key"`` (any depth), or ``default``."""
        node: Any = self.data
        for part in dotted.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return default
            node = node[part]
        return node

    def section(self, name: str) -> dict[str, Any]:
        """Return a copy of the table ``name`` (empty when absent).

        Raises:
            ConfigError: ``name`` exists but is not a table.
        """
        value = self.data.get(name, {})
        if not isinstance(value, Mapping):
            raise ConfigError(f"configuration key {name!r} must be a table, got {value!r}")
        return copy.deepcopy(dict(value))

    def with_overrides(self, overrides: Mapping[str, Any]) -> Config:
        """Return a new config with ``overrides`` merged on top."""
        data = copy.deepcopy(self.data)
        _merge(data, overrides)
        return Config(data, sources=self.sources)

    @property
    def data_dir(self) -> Path:
        """Directory for databases, vector stores and reports (created on first access)."""
        configured = self.get("paths.data_dir")
        if configured:
            path = Path(str(configured)).expanduser()
        else:
            import platformdirs

            path = Path(platformdirs.user_data_dir("flowyard"))
        path.mkdir(parents=True, exist_ok=True)
        return path

    # plugin selection ------------------------------------------------------

    @property
    def enabled_plugins(self) -> list[str] | None:
        """Plugin names to load, or None for all installed."""
        return _names(self.get("plugins.enabled"))

    @property
    def disabled_plugins(self) -> list[str]:
        """Plugin names to skip."""
        return _names(self.get("plugins.disabled")) or []

    @property
    def strict_plugins(self) -> bool:
        """True when a failing plugin must raise instead of being reported."""
        return _truthy(self.get("plugins.strict", False))

    @property
    def trace_plugins(self) -> bool:
        """True when hook calls are traced to stderr."""
        return _truthy(self.get("plugins.trace", False))

    def __repr__(self) -> str:
        return f"Config(sources={self.sources!r}, sections={sorted(self.data)!r})"
