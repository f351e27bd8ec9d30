"""Configuration precedence: code > environment > project file > user file > defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from flowyard.config import Config
from flowyard.errors import ConfigError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_precedence_of_every_level(tmp_path: Path) -> None:
    user = tmp_path / "user"
    project = tmp_path / "project"
    write(user / "flowyard.toml",
          '[storage]\nurl = "sqlite:///user.db"\n[a]\nx = 1\ny = 1\nz = 1\nw = 1\n')
    write(project / "flowyard.toml", '[a]\ny = 2\nz = 2\nw = 2\n')
    env = {"FLOWYARD_A__Z": "3", "FLOWYARD_A__W": "3", "UNRELATED": "1"}
    config = Config.load({"a": {"w": 4}}, env=env, cwd=project, user_config_dir=user)
    assert config.get("a.x") == 1
    assert config.get("a.y") == 2
    assert config.get("a.z") == 3
    assert config.get("a.w") == 4
    assert config.get("storage.url") == "sqlite:///user.db"
    assert config.sources == [str(project / "flowyard.toml"), str(user / "flowyard.toml")]


def test_named_environment_variables(tmp_path: Path) -> None:
    env = {"FLOWYARD_STORAGE_URL": "memory://", "FLOWYARD_DEFAULT_MODEL": "fake/echo",
           "FLOWYARD_PLUGINS": "a, b", "FLOWYARD_DISABLE_PLUGINS": "c",
           "FLOWYARD_STRICT_PLUGINS": "1", "FLOWYARD_DATA_DIR": str(tmp_path / "d")}
    config = Config.load(env=env, cwd=tmp_path, user_config_dir=tmp_path / "none")
    assert config.get("storage.url") == "memory://"
    assert config.get("models.default") == "fake/echo"
    assert config.enabled_plugins == ["a", "b"]
    assert config.disabled_plugins == ["c"]
    assert config.strict_plugins is True
    assert config.data_dir == tmp_path / "d" and config.data_dir.is_dir()


def test_environment_values_are_parsed_as_toml_when_they_parse(tmp_path: Path) -> None:
    env = {"FLOWYARD_LIMITS__RPM": "60", "FLOWYARD_X__NAME": "plain words",
           "FLOWYARD_X__LIST": '["a", "b"]', "FLOWYARD_STORAGE__SQLITE__BUSY_TIMEOUT": "5"}
    config = Config.load(env=env, cwd=tmp_path, user_config_dir=tmp_path)
    assert config.get("limits.rpm") == 60
    assert config.get("x.name") == "plain words"
    assert config.get("x.list") == ["a", "b"]
    assert config.get("storage.sqlite.busy_timeout") == 5


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "flowyard.toml", "[storage]\nurl = \n")
    with pytest.raises(ConfigError, match=r"flowyard\.toml: invalid TOML.*line 2"):
        Config.load(env={}, cwd=tmp_path, user_config_dir=tmp_path / "u")


def test_explicit_config_path_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="FLOWYARD_CONFIG"):
        Config.load(env={"FLOWYARD_CONFIG": str(tmp_path / "missing.toml")}, cwd=tmp_path,
                    user_config_dir=tmp_path)


def test_section_must_be_a_table(tmp_path: Path) -> None:
    config = Config({"openai": "not a table"})
    with pytest.raises(ConfigError, match="'openai' must be a table"):
        config.section("openai")
    assert Config({}).section("missing") == {}


def test_with_overrides_does_not_change_the_original() -> None:
    base = Config({"a": {"b": 1}})
    top = base.with_overrides({"a": {"c": 2}})
    assert base.data == {"a": {"b": 1}}
    assert top.data == {"a": {"b": 1, "c": 2}}
