"""flowyard-sandbox: the environment allow-list, directory confinement and the bubblewrap
command line, checked by running real processes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import flowyard
import pytest
from flowyard_sandbox import (
    bubblewrap_prefix,
    bubblewrap_usable,
    confine_directory,
    scrubbed_environment,
)


def test_only_allowed_names_are_copied_and_extra_wins() -> None:
    source = {"PATH": "/p", "LANG": "C", "AWS_SECRET_ACCESS_KEY": "s", "TZ": "UTC"}
    env = scrubbed_environment({"TZ": "Europe/Berlin", "TOKEN": "t"}, home="/w", source=source)
    assert env == {"PATH": "/p", "LANG": "C", "TZ": "Europe/Berlin", "HOME": "/w", "TOKEN": "t"}
    assert scrubbed_environment({}, home="/w", source={})["PATH"] == "/usr/local/bin:/usr/bin:/bin"


@pytest.mark.parametrize("extra", [{"BAD NAME": "x"}, {"OK": "a\0b"}])
def test_invalid_variables_are_refused_without_their_value(extra: dict[str, str]) -> None:
    with pytest.raises(flowyard.ConfigError) as caught:
        scrubbed_environment(extra, home="/w", source={})
    assert "a\0b" not in str(caught.value)


def test_directories_are_confined_to_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "escape").symlink_to(tmp_path)
    assert confine_directory(None, root) == str(root.resolve())
    assert confine_directory("sub", root) == str((root / "sub").resolve())
    for bad in ("..", "escape", "/etc", "sub/../../"):
        with pytest.raises(flowyard.ConfigError, match="outside the allowed root"):
            confine_directory(bad, root)
    with pytest.raises(flowyard.ConfigError, match="does not exist"):
        confine_directory("missing", root)


def test_bubblewrap_runs_a_command_confined(tmp_path: Path) -> None:
    usable, bwrap = bubblewrap_usable()
    if not usable:
        # scripts/system-deps.sh installs bubblewrap: a missing one is a failure, not a skip
        pytest.fail(f"bubblewrap is not usable here: {bwrap}")
    work = tmp_path / "work"
    work.mkdir()
    hidden = tmp_path / "hidden.txt"
    hidden.write_text("x")
    argv = [*bubblewrap_prefix(bwrap, str(work), python=False), "/bin/sh", "-c",
            f"pwd; test -e {hidden} && echo visible || echo hidden; echo hi > out.txt; "
            "touch /usr/nope 2>/dev/null && echo wrote-usr || echo usr-readonly"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin"}, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [os.path.realpath(work), "hidden", "usr-readonly"]
    assert (work / "out.txt").read_text() == "hi\n"


def test_missing_readonly_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(flowyard.ConfigError, match="does not exist"):
        bubblewrap_prefix("/usr/bin/bwrap", str(tmp_path), readonly=[str(tmp_path / "no")])
