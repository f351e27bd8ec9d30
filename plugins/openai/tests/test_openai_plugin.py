"""Registration of flowyard-openai providers from configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
from flowyard.errors import ConfigError
from flowyard.stack import Stack


def _stack(config: dict, monkeypatch: pytest.MonkeyPatch) -> Stack:
    monkeypatch.setenv("FLOWYARD_PLUGINS", "builtin,openai")
    monkeypatch.setenv("FLOWYARD_STRICT_PLUGINS", "1")
    return Stack(discover=True, config=config)


def test_openai_is_registered_lazily_without_default_metadata(
        flowyard_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stack = _stack({}, monkeypatch)
    assert "openai" in stack.providers.names()
    assert stack.providers.metadata_of("openai") == {}  # never the default unless configured
    assert "openai" not in stack.providers.loaded()
    assert stack.providers.plugin_of("openai") == "openai"


def test_endpoints_become_providers(flowyard_home: Path, monkeypatch: pytest.MonkeyPatch
                                    ) -> None:
    monkeypatch.setenv("LMSTUDIO_KEY", "lm-key-0123456789")
    stack = _stack({"openai": {
        "api_key": "sk-config-0123456789", "default_model": "gpt-4o-mini",
        "endpoints": {
            "lmstudio": {"base_url": "http://127.0.0.1:1234/v1", "api_key_env": "LMSTUDIO_KEY",
                         "free": True, "timeout": 30},
            "off": {"base_url": "http://127.0.0.1:1/v1", "enabled": False},
        }}}, monkeypatch)
    assert {"openai", "lmstudio"} <= set(stack.providers.names())
    assert "off" not in stack.providers.names()
    assert stack.providers.metadata_of("openai") == {"default_model": "openai/gpt-4o-mini",
                                                     "default_priority": 5}
    lm = stack.providers.get("lmstudio")
    assert lm.base_url == "http://127.0.0.1:1234/v1" and lm.free
    assert lm._api_key.get() == "lm-key-0123456789"
    assert "lm-key" not in repr(lm)
    assert stack.providers.get("openai")._api_key.get() == "sk-config-0123456789"
    assert stack.llm.default_model() == "openai/gpt-4o-mini"


def test_base_url_from_environment(flowyard_home: Path, monkeypatch: pytest.MonkeyPatch
                                   ) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8080/v1/")
    stack = _stack({}, monkeypatch)
    assert stack.providers.get("openai").base_url == "http://127.0.0.1:8080/v1"


@pytest.mark.parametrize(("config", "message"), [
    ({"openai": {"api_kye": "x"}}, "unknown key"),
    ({"openai": {"endpoints": {"x": {"api_key": "k"}}}}, "base_url is required"),
    ({"openai": {"endpoints": {"a/b": {"base_url": "http://127.0.0.1/v1"}}}}, "'/'"),
])
def test_bad_configuration_is_reported(flowyard_home: Path, monkeypatch: pytest.MonkeyPatch,
                                       config: dict, message: str) -> None:
    with pytest.raises(Exception) as info:
        _stack(config, monkeypatch)
    text = str(info.value) + str(info.value.__cause__ or "")
    assert message in text


def test_bad_option_value_is_a_config_error(flowyard_home: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    stack = _stack({"openai": {"structured_output": "xml"}}, monkeypatch)
    with pytest.raises(ConfigError, match="structured_output"):
        stack.providers.get("openai")
