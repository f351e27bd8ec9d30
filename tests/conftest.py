"""Shared configuration of the cross-distribution tests: every async test runs on both anyio
backends; the test-only plugins are made discoverable only for the tests that ask for them."""

from __future__ import annotations

import os
import sys
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

# Real models are loaded from installed packages only; never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


# The test-only plugins under tests/plugins (one proves entry-point discovery, two fail on
# purpose) are installed nowhere: a test that needs them asks for this fixture, which makes
# them importable and discoverable for that test only (sys.path and PYTHONPATH, so `flowyard`
# subprocesses see them too), so the environment of the main job never has broken plugins.
TEST_PLUGINS = Path(__file__).resolve().parent / "plugins"


def _dist_info(project: Path, site: Path) -> str:
    """Write a minimal ``.dist-info`` (METADATA, entry_points.txt) for ``project`` into ``site``,
    as an installer would, from its pyproject.toml."""
    meta = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    name, version = meta["name"], meta["version"]
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    requires = "".join(f"Requires-Dist: {req}\n" for req in meta.get("dependencies", []))
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requires}")
    groups = meta.get("entry-points", {})
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{key} = {value}\n" for key, value in points.items())
        for group, points in groups.items()))
    return str(name)


@pytest.fixture
def test_only_plugins(tmp_path_factory: pytest.TempPathFactory,
                      monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Make the test-only plugins (``flowyard-testplugin``, ``flowyard-brokenplugin``)
    discoverable through the ``flowyard`` entry-point group for one test; yields the
    distribution names."""
    site = tmp_path_factory.mktemp("test-plugins-site")
    projects = sorted(p.parent for p in TEST_PLUGINS.glob("*/pyproject.toml"))
    names = [_dist_info(project, site) for project in projects]
    paths = [str(site), *(str(project / "src") for project in projects)]
    for path in reversed(paths):
        monkeypatch.syspath_prepend(path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [*paths, *filter(None, [os.environ.get("PYTHONPATH")])]))
    yield names
    for module in [m for m in sys.modules if m.startswith(("flowyard_testplugin",
                                                          "flowyard_brokenplugin"))]:
        del sys.modules[module]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Any]:
    """One throwaway PostgreSQL server for the whole session: ``PostgresServer`` of
    plugins/sql/tests/conftest.py (initdb and pg_ctl of Debian's ``postgresql``, as user
    ``postgres`` when run as root; a missing PostgreSQL fails the test with a message naming
    scripts/system-deps.sh). Each test makes its own database with ``create_database()``.
    """
    path = Path(__file__).resolve().parents[1] / "plugins" / "sql" / "tests" / "conftest.py"
    spec = importlib.util.spec_from_file_location("_flowyard_sql_tests_conftest", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    server = module.PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.stop()
