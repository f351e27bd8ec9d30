"""Registration of the flowyard-anthropic provider from configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from flowyard.stack import Stack


def _stack(config: dict, monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("FLOWYARD_PLUGINS", "builtin,anthropic")
    monkeypatch.setenv("FLOWYARD_STRICT_PLUGINS", "1")
    return Stack(discover=True, config=config)


def test_registered_lazily_and_never_default_unless_configured(
        flowyard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = _stack({}, monkeypatch)
    assert "anthropic" in stack.providers.names()
    assert stack.providers.metadata_of("anthropic") == {}
    assert "anthropic" not in stack.providers.loaded()


def test_configuration(flowyard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9/v1")
    stack = _stack({"anthropic": {"api_key": "sk-ant-config-0123456789",
                                  "default_model": "claude-haiku-4-5",
                                  "prices": {"claude-haiku-4-5": {"input": 2, "output": 4}}}},
                   monkeypatch)
    assert stack.providers.metadata_of("anthropic") == {
        "default_model": "anthropic/claude-haiku-4-5", "default_priority": 5}
    provider = stack.providers.get("anthropic")
    assert provider.base_url == "http://127.0.0.1:9"  # /v1 is added per request
    assert provider.price("claude-haiku-4-5-20251001").input_per_mtok == 2
    assert "sk-ant-config" not in repr(provider)


def test_unknown_key_is_reported(flowyard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Exception) as info:
        _stack({"anthropic": {"apikey": "x"}}, monkeypatch)
    assert "unknown key" in str(info.value) + str(info.value.__cause__ or "")


def test_disabled(flowyard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = _stack({"anthropic": {"enabled": False}}, monkeypatch)
    assert "anthropic" not in stack.providers.names()
