"""``flowyard sandbox check``."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import pytest
from click.testing import CliRunner
from flowyard.cli import cli


def test_check_reports_a_working_sandbox(flowyard_home: Any) -> None:
    result = CliRunner().invoke(cli, ["sandbox", "check", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["bubblewrap"]["usable"] is True and report["bubblewrap"]["reason"] is None
    assert report["limits"]["RLIMIT_NPROC"] == 64
    assert report["effective_isolation"] == "bubblewrap"
    assert report["landlock"]["usable"] is True
    assert report["python"]["path"] == sys.executable
    if os.geteuid() == 0:
        assert report["runs_as"] == "nobody"


def test_check_names_the_fallbacks_without_bubblewrap(flowyard_home: Any,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWYARD_EXEC__BWRAP", "/nonexistent/bwrap")
    refused = CliRunner().invoke(cli, ["sandbox", "check"])
    assert refused.exit_code == 1, refused.output
    assert "isolation:  auto (calls will be refused)" in refused.output
    monkeypatch.setenv("FLOWYARD_EXEC__ISOLATION", "landlock")
    result = CliRunner().invoke(cli, ["sandbox", "check"])
    assert result.exit_code == 1, result.output
    assert "NOT usable: bubblewrap not found at /nonexistent/bwrap" in result.output
    assert "landlock:   usable" in result.output
    assert "isolation:  landlock (calls run with: landlock)" in result.output
    assert "python:     /" in result.output


def test_check_explains_a_missing_sandbox(flowyard_home: Any,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWYARD_EXEC__BWRAP", "/nonexistent/bwrap")
    monkeypatch.setenv("FLOWYARD_EXEC__ISOLATION", "required")
    result = CliRunner().invoke(cli, ["sandbox", "check"])
    assert result.exit_code == 1
    assert "NOT usable: bubblewrap not found at /nonexistent/bwrap" in result.output
    assert "calls will be refused" in result.output


def test_check_rejects_invalid_configuration(flowyard_home: Any,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLOWYARD_EXEC__ISOLATION", "sometimes")
    result = CliRunner().invoke(cli, ["sandbox", "check"])
    assert result.exit_code == 2
    assert "isolation must be one of" in result.output
