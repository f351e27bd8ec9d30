"""Whatever an installed plugin does, the CLI prints one clear line per problem and exits
non-zero, never a traceback. The plugins here are real installed distributions: a module and a
``.dist-info`` folder with an entry point, on ``PYTHONPATH`` of a real ``flowyard`` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

FLOWYARD = str(Path(sys.executable).parent / "flowyard")

PLUGINS = {
    "notaprovider": '''
        import flowyard

        @flowyard.hookimpl
        def register_providers(register, config):
            register("bogus", object())     # not a provider at all
    ''',
    "lazynotaprovider": '''
        import flowyard

        @flowyard.hookimpl
        def register_providers(register, config):
            register("lazybogus", factory=lambda: "a string")
    ''',
    "raisingmodels": '''
        import flowyard
        from flowyard.models import ChatResponse

        class Raising:
            name = "raising"
            async def chat(self, request): raise RuntimeError("no chat")
            def stream(self, request): raise RuntimeError("no stream")
            async def embed(self, texts, *, model): return []
            async def list_models(self): raise ValueError("model table is corrupt")
            async def aclose(self): pass

        @flowyard.hookimpl
        def register_providers(register, config):
            register("raising", Raising())
    ''',
    "importfails": '''
        raise ImportError("this plugin cannot be imported: missing libfoo.so")
    ''',
}


def install(site: Path, name: str, source: str) -> None:
    (site / f"{name}.py").write_text(textwrap.dedent(source))
    info = site / f"flowyard_hostile_{name}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: flowyard-hostile-{name}\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(f"[flowyard]\n{name} = {name}\n")


@pytest.fixture
def site(tmp_path: Path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    return folder


def flowyard(site: Path, home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLOWYARD_")}
    environ.update(PYTHONPATH=str(site), FLOWYARD_DATA_DIR=str(home / "data"),
                   FLOWYARD_CONFIG_DIR=str(home / "config"), HF_HUB_OFFLINE="1",
                   FLOWYARD_DISABLE_PLUGINS="broken-import,broken-hook", **env)
    return subprocess.run([FLOWYARD, *args], env=environ, capture_output=True, text=True,
                          timeout=300, cwd=home)


def test_doctor_reports_a_non_provider_and_a_raising_provider_without_a_traceback(
        site: Path, tmp_path: Path) -> None:
    for name in ("notaprovider", "lazynotaprovider", "raisingmodels"):
        install(site, name, PLUGINS[name])
    table = flowyard(site, tmp_path, "doctor", "--timeout", "2", "--check-timeout", "60")
    assert table.returncode == 1 and "Traceback" not in table.stdout + table.stderr
    done = flowyard(site, tmp_path, "doctor", "--json", "--timeout", "2",
                    "--check-timeout", "60")
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    report = json.loads(done.stdout)
    failures = " | ".join(f"{c['name']}: {c['detail']}" for c in report["checks"]
                          if c["status"] == "fail")
    assert "plugin 'notaprovider' registered provider 'bogus' as a object, which is not a " \
        "provider: it lacks name, chat, stream, embed, list_models, aclose" in failures
    assert "'lazybogus' as a str, which is not a provider" in failures
    assert "raising: the provider's list_models raised ValueError: model table is " \
        "corrupt" in failures
    plugins = flowyard(site, tmp_path, "plugins", "--json")
    assert plugins.returncode == 0 and "notaprovider" in plugins.stdout
    assert '"failed"' in plugins.stdout  # registered a non-provider: the plugin failed


def test_strict_mode_is_one_error_line(site: Path, tmp_path: Path) -> None:
    install(site, "importfails", PLUGINS["importfails"])
    (tmp_path / "wf.yaml").write_text(
        "name: w\nsteps:\n  - id: a\n    uses: echo\n    with: {value: 1}\n")
    done = flowyard(site, tmp_path, "run", "wf.yaml", FLOWYARD_STRICT_PLUGINS="1")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "importfails" in lines[0] and "missing libfoo.so" in lines[0]


def test_an_unexpected_error_names_its_type_and_the_switch_for_the_traceback(
        site: Path, tmp_path: Path) -> None:
    install(site, "lazynotaprovider", PLUGINS["lazynotaprovider"])
    (tmp_path / "wf.yaml").write_text(
        "name: w\nsteps:\n  - id: a\n    uses: llm.chat\n"
        "    with: {prompt: hi, model: lazybogus/x}\n")
    done = flowyard(site, tmp_path, "run", "wf.yaml", "--no-live")
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert "not a provider" in " ".join((done.stdout + done.stderr).split())
