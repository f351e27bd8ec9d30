"""shell.run and python.run: results, arguments, limits, environment, isolation choice."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import anyio
import flowyard_exec.sandbox
import pytest
from flowyard.errors import ConfigError, ToolError, ToolInputError
from flowyard_exec import ExecSettings

pytestmark = pytest.mark.anyio


# ----------------------------------------------------------------------------- shell.run

async def test_argv_runs_in_the_sandbox_with_output_and_exit_code(make_tools: Any,
                                                                    tool_context: Any) -> None:
    shell, _ = make_tools()
    result = await shell.invoke(
        {"command": ["sh", "-c", "echo out; echo err >&2; hostname; exit 3"]}, tool_context)
    assert result["exit_code"] == 3
    assert result["stdout"] == "out\nsandbox\n"
    assert result["stderr"] == "err\n"
    assert result["isolation"] == "bubblewrap"
    assert result["timed_out"] is False and result["signal"] is None
    assert result["command"] == ["sh", "-c", "echo out; echo err >&2; hostname; exit 3"]
    assert not os.path.exists(result["work_dir"]), "the temporary work dir is removed"


async def test_arguments_are_not_interpreted_by_a_shell(make_tools: Any, tool_context: Any
                                                        ) -> None:
    shell, _ = make_tools()
    result = await shell.invoke({"command": ["echo", "$HOME; rm -rf /", "`id`"]}, tool_context)
    assert result["stdout"] == "$HOME; rm -rf / `id`\n"


async def test_shell_string_needs_config_and_argument(make_tools: Any, tool_context: Any) -> None:
    shell, _ = make_tools()
    with pytest.raises(ToolInputError, match=r"shell: true"):
        await shell.invoke({"command": "echo hi"}, tool_context)
    with pytest.raises(ToolInputError, match=r"allow_shell"):
        await shell.invoke({"command": "echo hi", "shell": True}, tool_context)
    allowed, _ = make_tools(allow_shell=True)
    with pytest.raises(ToolInputError, match=r"shell: true"):
        await allowed.invoke({"command": "echo hi"}, tool_context)
    result = await allowed.invoke({"command": "echo hi | tr a-z A-Z", "shell": True},
                                  tool_context)
    assert result["stdout"] == "HI\n"


async def test_allowed_commands_limit_the_program(make_tools: Any, tool_context: Any) -> None:
    shell, _ = make_tools(allowed_commands=["echo"])
    assert (await shell.invoke({"command": ["echo", "x"]}, tool_context))["stdout"] == "x\n"
    with pytest.raises(ToolInputError, match=r"allowed_commands"):
        await shell.invoke({"command": ["/bin/sh", "-c", "echo x"]}, tool_context)


async def test_stdin_is_fed(make_tools: Any, tool_context: Any) -> None:
    shell, _ = make_tools()
    result = await shell.invoke({"command": ["wc", "-l"], "stdin": "a\nb\nc\n"}, tool_context)
    assert result["stdout"].strip() == "3"


async def test_output_is_capped(make_tools: Any, tool_context: Any) -> None:
    shell, _ = make_tools(max_output_bytes=1000)
    result = await shell.invoke({"command": ["head", "-c", "50000", "/dev/zero"]}, tool_context)
    assert len(result["stdout"]) == 1000 and result["stdout_truncated"] is True
    assert result["exit_code"] == 0


async def test_check_raises_on_failure(make_tools: Any, tool_context: Any) -> None:
    shell, _ = make_tools()
    with pytest.raises(ToolError, match=r"exited with 2.*boom"):
        await shell.invoke({"command": ["sh", "-c", "echo boom >&2; exit 2"], "check": True},
                           tool_context)


async def test_missing_program_is_reported(make_tools: Any, tool_context: Any) -> None:
    shell, _ = make_tools()
    result = await shell.invoke({"command": ["no-such-program-xyz"]}, tool_context)
    assert result["exit_code"] == 127
    assert "cannot execute 'no-such-program-xyz'" in result["stderr"]


async def test_environment_is_scrubbed(make_tools: Any, tool_context: Any,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWYARD_TEST_SECRET", "s3cret-value")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    monkeypatch.setenv("KEEP_ME", "kept")
    for isolation_config in ({}, {"isolation": "none", "user": ""}):
        shell, _ = make_tools(env_allow=["PATH", "KEEP_ME"], env={"FIXED": "1"},
                              **isolation_config)
        result = await shell.invoke({"command": ["env"], "env": {"PER_CALL": "yes"}},
                                    tool_context)
        env = dict(line.split("=", 1) for line in result["stdout"].splitlines())
        assert "s3cret-value" not in result["stdout"] and "aws-secret" not in result["stdout"]
        assert env["KEEP_ME"] == "kept" and env["FIXED"] == "1" and env["PER_CALL"] == "yes"
        assert env["HOME"] == result["work_dir"]
        assert set(env) <= {"PATH", "KEEP_ME", "FIXED", "PER_CALL", "HOME", "TMPDIR", "PWD",
                            "PYTHONDONTWRITEBYTECODE", "SHLVL", "_"}


async def test_runs_as_nobody_when_flowyard_is_root(make_tools: Any, tool_context: Any) -> None:
    shell, _ = make_tools()
    result = await shell.invoke({"command": ["id", "-u"]}, tool_context)
    expected = "65534" if os.geteuid() == 0 else str(os.geteuid())
    assert result["stdout"].strip() == expected


async def test_fixed_work_dir_keeps_files(make_tools: Any, tool_context: Any, work_dir: Path
                                          ) -> None:
    shell, _ = make_tools(work_dir=str(work_dir))
    result = await shell.invoke({"command": ["sh", "-c", "pwd; echo data > made.txt"]},
                                tool_context)
    assert result["stdout"].strip() == str(work_dir.resolve())
    assert (work_dir / "made.txt").read_text() == "data\n"


async def test_file_size_limit(make_tools: Any, tool_context: Any, work_dir: Path) -> None:
    shell, _ = make_tools(work_dir=str(work_dir), max_file_mb=1)
    result = await shell.invoke(
        {"command": ["sh", "-c", "head -c 3000000 /dev/zero > big"]}, tool_context)
    assert result["exit_code"] != 0
    assert (work_dir / "big").stat().st_size <= 1024 * 1024


async def test_sandbox_system_is_read_only_and_host_files_invisible(
        make_tools: Any, tool_context: Any, tmp_path: Path) -> None:
    secret = tmp_path / "host-secret.txt"
    secret.write_text("top secret")
    shell, _ = make_tools()
    result = await shell.invoke({"command": ["sh", "-c",
                                             f"cat {secret}; touch /usr/pwned; echo $?"]},
                                tool_context)
    assert "top secret" not in result["stdout"]
    assert result["stdout"].strip().splitlines()[-1] != "0"
    assert not os.path.exists("/usr/pwned")


# ----------------------------------------------------------------------------- isolation choice

async def test_required_isolation_refuses_without_bubblewrap(make_tools: Any, tool_context: Any,
                                                             work_dir: Path) -> None:
    shell, python = make_tools(isolation="required", bwrap="/nonexistent/bin/bwrap",
                               work_dir=str(work_dir))
    with pytest.raises(ToolError, match=r"isolation is required but unavailable.*"
                                        "/nonexistent/bin/bwrap"):
        await shell.invoke({"command": ["touch", "ran"]}, tool_context)
    with pytest.raises(ToolError, match=r"refusing to run unsandboxed"):
        await python.invoke({"code": "open('ran', 'w').write('x')"}, tool_context)
    assert not (work_dir / "ran").exists(), "nothing ran"


async def test_a_call_or_step_can_require_isolation_but_not_weaken_it(
        make_tools: Any, tool_context: Any, monkeypatch: pytest.MonkeyPatch,
        capfd: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ToolError, match=r"/nonexistent/bin/bwrap; refusing to run unsandboxed"):
        await make_tools(bwrap="/nonexistent/bin/bwrap", user="")[0].invoke(
            {"command": ["true"]}, tool_context)
    shell, _ = make_tools(bwrap="/nonexistent/bin/bwrap", user="", isolation="landlock")
    logs: list[Any] = []
    unsubscribe = tool_context.stack.events.subscribe(
        lambda event: logs.append(event) if event.type == "log" else None, name="test-logs")
    capfd.readouterr()
    confined = await shell.invoke({"command": ["true"]}, tool_context)
    assert confined["isolation"] == "landlock"
    assert "runs unsandboxed with isolation landlock" in capfd.readouterr().err
    assert any("runs unsandboxed with isolation landlock" in e.data["message"] and
               e.data["level"] == "warning" for e in logs), "the weaker level is logged too"

    async def no_landlock(settings: Any) -> tuple[bool, str]:
        return False, "Landlock is not enabled in this kernel (test)"

    monkeypatch.setattr(flowyard_exec.sandbox, "probe_landlock", no_landlock)
    with pytest.raises(ToolError, match=r"Landlock is unavailable: Landlock is not enabled.*"
                                        r"refusing to run unconfined"):
        await shell.invoke({"command": ["true"]}, tool_context)
    bare_shell, _ = make_tools(bwrap="/nonexistent/bin/bwrap", user="", isolation="none")
    bare = await bare_shell.invoke({"command": ["true"]}, tool_context)
    unsubscribe()
    assert bare["isolation"] == "none"
    with pytest.raises(ToolError, match=r"isolation is required"):
        await shell.invoke({"command": ["true"], "isolation": "required"}, tool_context)
    step = tool_context.child(extras={"isolation": "required"})
    with pytest.raises(ToolError, match=r"isolation is required"):
        await shell.invoke({"command": ["true"]}, step)
    sandboxed, _ = make_tools(isolation="required")
    result = await sandboxed.invoke({"command": ["true"], "isolation": "none"}, tool_context)
    assert result["isolation"] == "bubblewrap"


async def test_broken_bubblewrap_is_detected_by_the_probe(make_tools: Any, tool_context: Any,
                                                          tmp_path: Path) -> None:
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to creating new namespace' >&2\n"
                    "exit 1\n")
    fake.chmod(0o755)
    shell, _ = make_tools(bwrap=str(fake), isolation="required")
    with pytest.raises(ToolError, match=r"cannot create a sandbox here.*No permissions"):
        await shell.invoke({"command": ["true"]}, tool_context)


async def test_network_is_unshared_in_the_sandbox(make_tools: Any, tool_context: Any) -> None:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener:
        _, python = make_tools()
        code = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), "
                f"timeout=2)\n    result = 'connected'\nexcept OSError as exc:\n"
                f"    result = type(exc).__name__\n")
        out = await python.invoke({"code": code}, tool_context)
        assert out["result"] != "connected"
        _, unsandboxed = make_tools(isolation="none", user="")
        out = await unsandboxed.invoke({"code": code}, tool_context)
        assert out["result"] == "connected" and out["isolation"] == "none"


def test_invalid_config_is_rejected() -> None:
    with pytest.raises(ConfigError, match=r"isolation"):
        ExecSettings.from_section({"isolation": "maybe"})
    with pytest.raises(ConfigError, match=r"memory_mb"):
        ExecSettings.from_section({"memory_mb": -5})
    with pytest.raises(ConfigError, match=r"unknown key"):
        ExecSettings.from_section({"timeuot": 3})
    with pytest.raises(ConfigError, match=r"ro_binds"):
        ExecSettings.from_section({"ro_binds": ["relative/path"]})


async def test_timeout_above_the_maximum_is_refused(make_tools: Any, tool_context: Any) -> None:
    shell, _ = make_tools(max_timeout=5, timeout=1)
    with pytest.raises(ToolError, match=r"exceeds the configured maximum"):
        await shell.invoke({"command": ["true"], "timeout": 50}, tool_context)


# ----------------------------------------------------------------------------- python.run

async def test_python_context_in_result_out(make_tools: Any, tool_context: Any) -> None:
    _, python = make_tools()
    result = await python.invoke(
        {"code": "print('working')\nresult = [x * context['multiplier'] for x in "
                 "context['data']]",
         "context": {"data": [1, 2, 3], "multiplier": 2}}, tool_context)
    assert result["result"] == [2, 4, 6]
    assert result["stdout"] == "working\n"
    assert result["isolation"] == "bubblewrap" and result["exit_code"] == 0


async def test_python_script_file_inside_script_dir(make_tools: Any, tool_context: Any,
                                                    tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    scripts.mkdir()
    (scripts / "process_data.py").write_text(
        "data = context['data']\nresult = {'total': sum(data), 'file': __file__ != ''}\n")
    (tmp_path / "outside.py").write_text("result = 'escaped'\n")
    _, python = make_tools(script_dir=str(scripts))
    out = await python.invoke({"script": "process_data.py", "context": {"data": [4, 5]}},
                              tool_context)
    assert out["result"] == {"total": 9, "file": True}
    for bad in ("../outside.py", str(tmp_path / "outside.py"), "/etc/passwd"):
        with pytest.raises(ToolInputError, match=r"outside the script directory"):
            await python.invoke({"script": bad}, tool_context)
    with pytest.raises(ToolInputError, match=r"not a file"):
        await python.invoke({"script": "missing.py"}, tool_context)


async def test_python_exception_is_a_tool_error_with_traceback(make_tools: Any,
                                                               tool_context: Any) -> None:
    _, python = make_tools()
    with pytest.raises(ToolError, match=r"raised ZeroDivisionError: division by zero"
                                        r"(.|\n)*line 2"):
        await python.invoke({"code": "x = 1\ny = x / 0\n"}, tool_context)


async def test_python_result_must_be_json(make_tools: Any, tool_context: Any) -> None:
    _, python = make_tools()
    with pytest.raises(ToolError, match=r"not JSON-serialisable"):
        await python.invoke({"code": "result = {1, 2}"}, tool_context)
    none = await python.invoke({"code": "x = 1"}, tool_context)
    assert none["result"] is None


async def test_python_needs_exactly_one_of_code_and_script(make_tools: Any, tool_context: Any
                                                           ) -> None:
    _, python = make_tools()
    with pytest.raises(ToolInputError):
        await python.invoke({"context": {}}, tool_context)
    with pytest.raises(ToolInputError):
        await python.invoke({"code": "result = 1", "script": "x.py"}, tool_context)


async def test_python_nonzero_sys_exit_is_an_error(make_tools: Any, tool_context: Any) -> None:
    _, python = make_tools()
    with pytest.raises(ToolError, match=r"SystemExit"):
        await python.invoke({"code": "import sys\nsys.exit(4)"}, tool_context)


async def test_cancelling_the_call_kills_the_process(make_tools: Any, tool_context: Any,
                                                     work_dir: Path) -> None:
    shell, _ = make_tools(work_dir=str(work_dir))
    script = "while true; do date +%s%N > tick; sleep 0.05; done"
    with anyio.move_on_after(1.0):
        await shell.invoke({"command": ["sh", "-c", script], "timeout": 60}, tool_context)
    first = (work_dir / "tick").read_text()
    await anyio.sleep(0.5)
    assert (work_dir / "tick").read_text() == first, "the loop stopped with the cancelled call"


async def test_json_result_round_trip(make_tools: Any, tool_context: Any) -> None:
    _, python = make_tools()
    payload = {"text": "ünïcödé", "n": 1.5, "nested": {"list": [None, True]}}
    out = await python.invoke({"code": "result = context", "context": payload}, tool_context)
    assert out["result"] == payload
    json.dumps(out)



async def test_ro_binds_make_host_data_visible_read_only(make_tools: Any, tool_context: Any,
                                                         tmp_path: Path) -> None:
    data = tmp_path / "dataset"
    data.mkdir()
    (data / "rows.csv").write_text("a,b\n1,2\n")
    shell, _ = make_tools(ro_binds=[str(data)])
    result = await shell.invoke(
        {"command": ["sh", "-c", f"cat {data}/rows.csv; echo x > {data}/new.csv; echo $?"]},
        tool_context)
    assert result["stdout"].startswith("a,b\n1,2\n")
    assert result["stdout"].strip().splitlines()[-1] != "0"
    assert not (data / "new.csv").exists()
    missing, _ = make_tools(ro_binds=[str(tmp_path / "missing")])
    with pytest.raises(ToolError, match=r"ro_binds: .*missing does not exist"):
        await missing.invoke({"command": ["true"]}, tool_context)
