"""``flowyard providers --json``: JSON-ready rows, capabilities as sorted lists (issue 20)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from flowyard.cli import cli
from flowyard.models import ModelInfo, ModelPrice
from flowyard.serialization import from_json, to_json, unstructure


@pytest.fixture
def runner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("FLOWYARD_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOWYARD_STORAGE_URL", "memory://")
    monkeypatch.chdir(tmp_path)
    return CliRunner()


def test_unstructured_capabilities_are_sorted_lists_and_round_trip() -> None:
    info = ModelInfo(provider="p", model="m", capabilities={"vision", "chat", "tools"},
                     price=ModelPrice(1.0, 2.0))
    data = unstructure(info)
    assert data["capabilities"] == ["chat", "tools", "vision"]
    json.dumps(data)  # JSON-ready without a default= hook
    assert from_json(to_json(info), ModelInfo) == info


def test_providers_json_prints_every_provider_with_its_models(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["providers", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert isinstance(rows, list)
    for row in rows:
        assert set(row) == {"provider", "models", "error"}
    fake = next(row for row in rows if row["provider"] == "fake")
    assert fake["error"] is None
    by_model = {m["model"]: m for m in fake["models"]}
    assert set(by_model) == {"echo", "priced", "unpriced"}
    priced = by_model["priced"]
    assert priced["provider"] == "fake"
    assert priced["context_window"] == 4096 and priced["max_output_tokens"] == 1024
    assert priced["capabilities"] == sorted(priced["capabilities"])
    assert priced["capabilities"] == ["chat", "embeddings", "json", "streaming", "tools",
                                      "vision"]
    assert priced["price"] == {"input_per_mtok": 1.0, "output_per_mtok": 2.0,
                               "source": "fake provider", "as_of": ""}
    assert by_model["unpriced"]["price"] is None


def test_providers_table_still_prints(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["providers"])
    assert result.exit_code == 0, result.output
    assert "fake/priced" in result.output


def test_providers_json_shows_configured_prices_and_capabilities(runner: CliRunner,
                                                                 tmp_path: Path) -> None:
    (tmp_path / "flowyard.toml").write_text(
        '[models.info."fake/priced"]\n'
        "input_per_mtok = 10.0\noutput_per_mtok = 30.0\n"
        'source = "https://example.test/pricing"\nas_of = "2026-12-01"\n'
        'capabilities = ["vision", "chat"]\n')
    result = runner.invoke(cli, ["providers", "--json"])
    assert result.exit_code == 0, result.output
    fake = next(row for row in json.loads(result.output) if row["provider"] == "fake")
    priced = next(m for m in fake["models"] if m["model"] == "priced")
    assert priced["price"] == {"input_per_mtok": 10.0, "output_per_mtok": 30.0,
                               "source": "https://example.test/pricing", "as_of": "2026-12-01"}
    assert priced["capabilities"] == ["chat", "vision"]
