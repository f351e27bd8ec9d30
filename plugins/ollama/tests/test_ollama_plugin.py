"""Registration of the flowyard-ollama provider from configuration and environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from flowyard.stack import Stack


def _stack(config: dict, monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("FLOWYARD_PLUGINS", "builtin,ollama")
    monkeypatch.setenv("FLOWYARD_STRICT_PLUGINS", "1")
    return Stack(discover=True, config=config)


def test_registered_lazily_and_never_default_unless_configured(
        flowyard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    stack = _stack({}, monkeypatch)
    assert stack.providers.metadata_of("ollama") == {}
    assert "ollama" not in stack.providers.loaded()
    assert stack.providers.get("ollama").base_url == "http://127.0.0.1:11434"


def test_configuration_and_environment(flowyard_home: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0:11500")
    stack = _stack({"ollama": {"default_model": "llama3.2", "default_priority": 7,
                               "keep_alive": -1, "options": {"num_ctx": 4096}}}, monkeypatch)
    assert stack.providers.metadata_of("ollama") == {"default_model": "ollama/llama3.2",
                                                     "default_priority": 7}
    provider = stack.providers.get("ollama")
    assert provider.base_url == "http://127.0.0.1:11500"
    assert provider.keep_alive == -1 and provider.options == {"num_ctx": 4096}


def test_unknown_key_is_reported(flowyard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(Exception) as info:
        _stack({"ollama": {"host": "x"}}, monkeypatch)
    assert "unknown key" in str(info.value) + str(info.value.__cause__ or "")
