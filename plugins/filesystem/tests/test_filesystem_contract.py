"""Every filesystem tool passes the core's ToolContract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flowyard.testing import ToolContract
from flowyard_filesystem import tools
from flowyard_safepath import SafeRoot


def _root(tmp_path: Path) -> SafeRoot:
    root = tmp_path / "contract-root"
    root.mkdir()
    (root / "docs").mkdir()
    (root / "docs" / "a.md").write_text("# A\n")
    (root / "data.bin").write_bytes(b"\x00\x01\xff")
    return SafeRoot(root, fsync=False)


class _Base(ToolContract):
    tool_class: Any = None

    @pytest.fixture
    def tool(self, tmp_path: Path) -> Any:
        return self.tool_class(_root(tmp_path))


class TestReadContract(_Base):
    tool_class = tools.ReadTool

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"path": "data.bin", "encoding": "base64"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"path": "docs/a.md", "max_bytes": "ten"}


class TestWriteContract(_Base):
    tool_class = tools.WriteTool

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"path": "out/new.txt", "content": "hello"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"path": "out/new.txt"}


class TestAppendContract(_Base):
    tool_class = tools.AppendTool

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"path": "docs/a.md", "content": "more\n"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"path": "docs/a.md", "content": 5}


class TestListContract(_Base):
    tool_class = tools.ListTool

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"path": "docs"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"path": "docs", "limit": 0}


class TestGlobContract(_Base):
    tool_class = tools.GlobTool

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"pattern": "**/*.md"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"pattern": "*.md", "type": "socket"}


class TestExistsContract(_Base):
    tool_class = tools.ExistsTool

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"path": "docs/a.md"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"path": ""}


class TestMkdirContract(_Base):
    tool_class = tools.MkdirTool

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"path": "x/y/z"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"path": "x", "unknown": True}


class TestCopyContract(_Base):
    tool_class = tools.CopyTool

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"source": "docs", "destination": "docs-copy"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"source": "docs"}


class TestMoveContract(_Base):
    tool_class = tools.MoveTool

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"source": "docs/a.md", "destination": "b.md"}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"source": "docs/a.md", "destination": ["b.md"]}


class TestDeleteContract(_Base):
    tool_class = tools.DeleteTool

    @pytest.fixture
    def valid_arguments(self) -> dict[str, Any]:
        return {"path": "docs", "recursive": True}

    @pytest.fixture
    def invalid_arguments(self) -> dict[str, Any]:
        return {"path": "docs", "recursive": "yes"}


def test_every_action_has_a_contract_class() -> None:
    covered = {cls.tool_class.name for cls in _Base.__subclasses__()}
    assert covered == {cls.name for cls in tools.ALL_TOOLS}
    assert len(covered) == 10
