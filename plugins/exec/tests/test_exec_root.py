"""Running as root, out of the box: the defaults must work and must keep untrusted code away
from root's powers, with bubblewrap and without it.

The situation of the issue: flowyard runs as root from a virtualenv whose interpreter lives
under a 0700 ``/root`` (``/root/.venv``, ``/root/.pyenv``), so ``nobody`` -- the account
commands drop to -- cannot execute it. These tests need root (this machine and CI run as
root) and build that situation themselves: a virtualenv inside a 0700 directory, and a
``PATH`` without ``bwrap`` for the machine without bubblewrap.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flowyard.errors import ToolError
from flowyard_exec import ExecSettings, PythonRunTool, ShellRunTool
from flowyard_exec.sandbox import default_pythons

pytestmark = pytest.mark.anyio

NOBODY = 65534
# bubblewrap disabled by configuration; "PATH without bwrap" is the `no_bwrap_on_path` fixture.
NO_BWRAP = {"bwrap": "/nonexistent/bin/bwrap", "isolation": "landlock"}


@pytest.fixture(autouse=True)
def _as_root() -> None:
    assert os.geteuid() == 0, "these tests prove the behaviour as root: run them as root (CI does)"


def nobody_can_run(python: str) -> bool:
    """Whether ``nobody`` can start ``python`` on the host (no sandbox), checked directly."""
    try:
        done = subprocess.run([python, "-I", "-c", "pass"], user=NOBODY, group=NOBODY,
                              extra_groups=[], capture_output=True, timeout=30,
                              cwd="/", check=False)
    except OSError:  # missing, or not executable for nobody
        return False
    return done.returncode == 0


def open_dir(prefix: str, mode: int = 0o755) -> Path:
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(mode)
    return path


@pytest.fixture
def no_bwrap_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A machine without bubblewrap: PATH holds only a directory of links to a few programs
    (``bwrap`` not among them), so the default configuration finds no bubblewrap."""
    bin_dir = open_dir("flowyard-exec-path-")
    for name in ("echo", "sh", "cat", "id", "env", "touch", "mkdir", "ls", "printf"):
        target = shutil.which(name, path="/usr/bin:/bin")
        assert target is not None, name
        (bin_dir / name).symlink_to(target)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert shutil.which("bwrap") is None
    yield bin_dir
    shutil.rmtree(bin_dir)


@pytest.fixture(scope="module")
def private_venvs() -> Iterator[dict[str, str]]:
    """Two virtualenvs of flowyard's own interpreter that ``nobody`` cannot execute:

    - ``in_private_home``: ``<dir 0700>/.venv`` (0755), like ``/root/.venv`` under a 0700
      ``/root``;
    - ``private_prefix``: ``<dir 0755>/venv`` whose own directory is 0700.
    """
    home = open_dir("flowyard-exec-home-", 0o700)
    shelf = open_dir("flowyard-exec-shelf-")
    venvs = {"in_private_home": home / ".venv", "private_prefix": shelf / "venv"}
    for path in venvs.values():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True,
                       capture_output=True, timeout=120)
        path.chmod(0o755)
    venvs["private_prefix"].chmod(0o700)
    pythons = {name: str(path / "bin" / "python") for name, path in venvs.items()}
    for python in pythons.values():
        assert not nobody_can_run(python), f"precondition: nobody cannot run {python}"
    yield pythons
    shutil.rmtree(home)
    shutil.rmtree(shelf)


@pytest.fixture
def root_secret() -> Iterator[Path]:
    """A root-only file (0600) in /root, like root's credentials."""
    path = Path("/root") / f"flowyard-exec-secret-{uuid.uuid4().hex}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"root-only-{uuid.uuid4().hex}")
    yield path
    path.unlink()


@pytest.fixture
def targets() -> Iterator[dict[str, Path]]:
    """Places outside the work directory: a world-writable (1777) directory nobody may write
    to by its permissions, and a world-readable file in an open directory (like a project's
    ``flowyard.toml``)."""
    shared = open_dir("flowyard-exec-shared-", 0o1777)
    project = open_dir("flowyard-exec-project-")
    readable = project / "flowyard.toml"
    readable.write_text(f"api_key = 'project-{uuid.uuid4().hex}'\n")
    readable.chmod(0o644)
    yield {"shared": shared, "readable": readable}
    shutil.rmtree(shared)
    shutil.rmtree(project)


def collect_logs(tool_context: Any) -> tuple[list[str], Any]:
    messages: list[str] = []
    unsubscribe = tool_context.stack.events.subscribe(
        lambda event: messages.append(event.data["message"])
        if event.type == "log" and event.data.get("level") == "warning" else None,
        name=f"test-logs-{uuid.uuid4().hex}")
    return messages, unsubscribe


def tools(**section: Any) -> tuple[ShellRunTool, PythonRunTool]:
    settings = ExecSettings.from_section(section)
    return ShellRunTool(settings), PythonRunTool(settings)


# ----------------------------------------------------------------------------- out of the box


@pytest.mark.parametrize("without", ["path", "config"])
async def test_defaults_work_as_root_without_bubblewrap(
        request: pytest.FixtureRequest, tool_context: Any, without: str) -> None:
    """The issue: as root, no bubblewrap, an interpreter nobody cannot execute. The default
    configuration refuses (fail closed, saying how to install bubblewrap and how to opt out);
    with the explicit opt-out ``isolation = "landlock"`` both tools work, as nobody, confined
    by Landlock, and the result says so; the interpreter switch is logged."""
    if without == "path":
        request.getfixturevalue("no_bwrap_on_path")
        refused, _ = tools()
        shell, python = tools(isolation="landlock")
        assert shell.settings.bwrap is None
    else:
        refused, _ = tools(bwrap=NO_BWRAP["bwrap"])
        shell, python = tools(**NO_BWRAP)
    with pytest.raises(ToolError, match=r"refusing to run unsandboxed.*apt-get install "
                                        r"bubblewrap.*isolation = \"landlock\""):
        await refused.invoke({"command": ["echo", "hi"]}, tool_context)
    messages, unsubscribe = collect_logs(tool_context)
    try:
        echoed = await shell.invoke({"command": ["echo", "hi"]}, tool_context)
        printed = await python.invoke({"code": "print(1+1)"}, tool_context)
    finally:
        unsubscribe()
    assert echoed["stdout"] == "hi\n" and echoed["exit_code"] == 0
    assert printed["stdout"] == "2\n" and printed["result"] is None
    for result in (echoed, printed):
        assert result["user"] == "nobody" and result["isolation"] == "landlock"
    assert any("runs unsandboxed with isolation landlock" in m for m in messages)
    assert nobody_can_run(printed["python"])
    if not nobody_can_run(sys.executable):
        # This machine: flowyard's interpreter lives under /root (pyenv), like the issue's.
        assert printed["python"] != sys.executable
        assert any(f"cannot start (isolation landlock): {sys.executable}:" in m
                   and f"using {printed['python']}" in m for m in messages), messages


async def test_defaults_work_as_root_with_bubblewrap(tool_context: Any) -> None:
    """With bubblewrap the prefixes are bound into the sandbox, whose own root has fresh 0755
    parents: flowyard's interpreter (and its virtualenv's packages) work for nobody even
    though the host's /root is 0700."""
    assert shutil.which("bwrap"), "the test command installs bubblewrap (scripts/system-deps.sh)"
    shell, python = tools()
    echoed = await shell.invoke({"command": ["echo", "hi"]}, tool_context)
    printed = await python.invoke({"code": "print(1+1)\nimport attrs\nresult = 'attrs'"},
                                  tool_context)
    assert echoed["stdout"] == "hi\n" and printed["stdout"] == "2\n"
    assert printed["result"] == "attrs", "flowyard's virtualenv packages are importable"
    assert printed["python"] == sys.executable
    for result in (echoed, printed):
        assert result["user"] == "nobody" and result["isolation"] == "bubblewrap"


# ----------------------------------------------------------------------------- confinement

CONFINED = [pytest.param({}, "bubblewrap", id="bubblewrap"),
            pytest.param(NO_BWRAP, "landlock", id="landlock")]

PROBE_CODE = """
import os
report = {}
for path in context["read"]:
    try:
        with open(path) as fh:
            report[path] = "read:" + fh.read()
    except OSError as exc:
        report[path] = type(exc).__name__
for path in context["write"]:
    try:
        with open(path, "w") as fh:
            fh.write("x")
        report[path] = "written"
    except OSError as exc:
        report[path] = type(exc).__name__
for path in context["mkdir"]:
    try:
        os.mkdir(path)
        report[path] = "made"
    except OSError as exc:
        report[path] = type(exc).__name__
with open("inside.txt", "w") as fh:
    fh.write("ok")
import tempfile
with tempfile.NamedTemporaryFile() as fh:
    fh.write(b"scratch")
report["inside"] = open("inside.txt").read()
report["uid"] = os.getuid()
result = report
"""


@pytest.mark.parametrize(("section", "level"), CONFINED)
async def test_code_cannot_read_root_files_or_write_outside_its_work_dir(
        tool_context: Any, root_secret: Path, targets: dict[str, Path], section: dict[str, Any],
        level: str) -> None:
    tag = uuid.uuid4().hex
    writes = [Path("/root") / f"pwned-{tag}", Path("/tmp") / f"pwned-{tag}",
              Path("/var/tmp") / f"pwned-{tag}", targets["shared"] / f"pwned-{tag}",
              Path(sys.prefix) / f"pwned-{tag}", Path("/etc") / f"pwned-{tag}"]
    if os.path.isdir("/dev/shm"):
        writes.append(Path("/dev/shm") / f"pwned-{tag}")
    dirs = [targets["shared"] / f"dir-{tag}", Path("/tmp") / f"dir-{tag}"]
    shell, python = tools(**section)
    out = await python.invoke({"code": PROBE_CODE, "context": {
        "read": [str(root_secret), str(targets["readable"])],
        "write": [str(p) for p in writes], "mkdir": [str(p) for p in dirs]}}, tool_context)
    report = out["result"]
    assert out["isolation"] == level and out["user"] == "nobody" and report["uid"] == NOBODY
    assert report["inside"] == "ok", "the work directory is writable, tempfile works"
    assert not report[str(root_secret)].startswith("read:"), report
    assert not report[str(targets["readable"])].startswith("read:"), \
        "host files outside the visible set are unreadable even when world-readable"
    for path in [*writes, *dirs]:
        assert not path.exists(), f"{path} was created on the host"
        if level == "landlock":
            assert report[str(path)] in ("PermissionError", "FileNotFoundError"), report
    secret = root_secret.read_text()
    listed = await shell.invoke({"command": ["sh", "-c",
                                             f"cat {root_secret}; cat {targets['readable']}; "
                                             f"echo x > {targets['shared']}/sh-{tag}; "
                                             f"echo x > /tmp/sh-{tag}; id -u"]}, tool_context)
    assert secret not in listed["stdout"] and "api_key" not in listed["stdout"]
    assert listed["stdout"].strip().splitlines()[-1] == str(NOBODY)
    assert not (targets["shared"] / f"sh-{tag}").exists()
    assert not (Path("/tmp") / f"sh-{tag}").exists()


async def test_unsandboxed_code_still_runs_as_nobody(tool_context: Any, root_secret: Path
                                                     ) -> None:
    """``isolation: none`` gives up the sandbox, not the account: root's files stay closed."""
    _, python = tools(isolation="none")
    code = f"try:\n    result = open({str(root_secret)!r}).read()\nexcept OSError as exc:\n" \
           f"    result = type(exc).__name__\n"
    out = await python.invoke({"code": code}, tool_context)
    assert out["result"] == "PermissionError"
    assert out["isolation"] == "none" and out["user"] == "nobody"


async def test_root_only_when_configured_and_reported(tool_context: Any, root_secret: Path
                                                      ) -> None:
    """Running the code as root is an explicit ``user = ""``, and the result says ``root``."""
    shell, python = tools(user="", isolation="none")
    out = await python.invoke({"code": "import os\nresult = os.getuid()"}, tool_context)
    assert out["result"] == 0 and out["user"] == "root" and out["python"] == sys.executable
    listed = await shell.invoke({"command": ["cat", str(root_secret)]}, tool_context)
    assert listed["user"] == "root" and listed["stdout"] == root_secret.read_text()


async def test_landlock_ro_binds_are_readable_not_writable(tool_context: Any) -> None:
    data = open_dir("flowyard-exec-data-", 0o777)
    try:
        (data / "rows.csv").write_text("a,b\n1,2\n")
        (data / "rows.csv").chmod(0o666)
        shell, _ = tools(ro_binds=[str(data)], **NO_BWRAP)
        result = await shell.invoke(
            {"command": ["sh", "-c", f"cat {data}/rows.csv; echo y >> {data}/rows.csv; "
                                     f"echo x > {data}/new.csv; echo $?"]}, tool_context)
        assert result["isolation"] == "landlock"
        assert result["stdout"].startswith("a,b\n1,2\n")
        assert result["stdout"].strip().splitlines()[-1] != "0"
        assert not (data / "new.csv").exists()
        assert (data / "rows.csv").read_text() == "a,b\n1,2\n"
    finally:
        shutil.rmtree(data)


# ----------------------------------------------------------------------------- interpreters


@pytest.mark.parametrize(("section", "level"), CONFINED)
async def test_venv_under_a_private_home(tool_context: Any, private_venvs: dict[str, str],
                                         section: dict[str, Any], level: str) -> None:
    """``/root/.venv`` under a 0700 ``/root``: bubblewrap shows it to nobody (fresh parents
    in the sandbox); without bubblewrap the next candidate runs the code, with a warning."""
    venv = private_venvs["in_private_home"]
    fallback = [p for p in default_pythons()[1:] if nobody_can_run(p)]
    assert fallback, "the machine has a system python3"
    _, python = tools(python=[venv, *fallback], **section)
    messages, unsubscribe = collect_logs(tool_context)
    try:
        out = await python.invoke({"code": "import sys\nresult = sys.prefix"}, tool_context)
    finally:
        unsubscribe()
    assert out["isolation"] == level
    if level == "bubblewrap":
        assert out["python"] == venv and out["result"] == str(Path(venv).parents[1])
        assert not any("cannot start" in m for m in messages)
    else:
        assert out["python"] == fallback[0]
        assert any(f"'nobody' cannot start (isolation landlock): {venv}:" in m
                   and "Permission denied" in m and f"using {fallback[0]}" in m
                   for m in messages), messages


@pytest.mark.parametrize(("section", "level"), CONFINED)
async def test_private_prefix_falls_back_in_both_branches(
        tool_context: Any, private_venvs: dict[str, str], section: dict[str, Any],
        level: str) -> None:
    """A prefix that is itself 0700 stays closed inside bubblewrap too (bind mounts keep
    modes): the next candidate runs the code, the warning and the result say which; code that
    needs the skipped environment's packages gets a note saying why they are missing."""
    venv = private_venvs["private_prefix"]
    fallback = [p for p in default_pythons()[1:] if nobody_can_run(p)]
    _, python = tools(python=[venv, *fallback], **section)
    messages, unsubscribe = collect_logs(tool_context)
    try:
        out = await python.invoke({"code": "result = 1 + 1"}, tool_context)
        with pytest.raises(ToolError, match=r"ModuleNotFoundError(.|\n)*note: the code ran "
                                            rf"with {fallback[0]} because account 'nobody' "
                                            rf"cannot start {venv}"):
            await python.invoke({"code": "import flowyard_exec"}, tool_context)
    finally:
        unsubscribe()
    assert out["result"] == 2 and out["python"] == fallback[0] and out["isolation"] == level
    assert any(f"cannot start (isolation {level}): {venv}:" in m for m in messages), messages


async def test_a_single_configured_interpreter_is_never_replaced(
        tool_context: Any, private_venvs: dict[str, str]) -> None:
    venv = private_venvs["private_prefix"]
    _, python = tools(python=venv, **NO_BWRAP)
    with pytest.raises(ToolError, match=r"without a result(.|\n)*Permission denied(.|\n)*"
                                        r"readable and executable by the account the code "
                                        r"runs as, 'nobody'"):
        await python.invoke({"code": "result = 1"}, tool_context)


async def test_no_usable_interpreter_is_refused_with_the_ways_out(
        tool_context: Any, private_venvs: dict[str, str], work_dir: Path) -> None:
    venv = private_venvs["in_private_home"]
    _, python = tools(python=[venv, "/nonexistent/bin/python3"], work_dir=str(work_dir),
                      **NO_BWRAP)
    with pytest.raises(ToolError) as info:
        await python.invoke({"code": "open('ran', 'w').write('x')"}, tool_context)
    message = str(info.value)
    assert "no interpreter can be started" in message
    assert f"{venv}: exit code 127" in message and "/nonexistent/bin/python3: not found" in message
    assert "install bubblewrap" in message and 'user = ""' in message
    assert not (work_dir / "ran").exists()
