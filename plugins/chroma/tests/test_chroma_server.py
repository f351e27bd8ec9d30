"""The ``url`` option: the memory and retriever contracts against a real chroma server
(``chroma run``, shipped with chromadb) listening on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from flowyard.config import Config
from flowyard.errors import StorageError
from flowyard.testing import MemoryContract, RetrieverContract
from flowyard_chroma.memory import ChromaMemoryStore
from flowyard_chroma.retriever import ChromaRetriever


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def chroma_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``chroma run`` on a free local port; yield its URL; stop it afterwards."""
    port = _free_port()
    data = tmp_path_factory.mktemp("chroma-server")
    log = (data / "server.log").open("wb")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "chroma"), "run", "--path", str(data / "db"),
         "--host", "127.0.0.1", "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT,
        env={**os.environ, "ANONYMIZED_TELEMETRY": "False"})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chroma server did not start: "
                                   f"{(data / 'server.log').read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def server_config(chroma_server: str, tmp_path: Path) -> Config:
    """A config pointing at the server, whose collections are all dropped first."""
    import chromadb
    from chromadb.config import Settings

    port = int(chroma_server.rsplit(":", 1)[1])
    client = chromadb.HttpClient(host="127.0.0.1", port=port,
                                 settings=Settings(anonymized_telemetry=False))
    for col in client.list_collections():
        client.delete_collection(col.name)
    return Config({"chroma": {"url": chroma_server}, "paths": {"data_dir": str(tmp_path)}})


class TestServerMemoryContract(MemoryContract):
    @pytest.fixture
    def memory_store(self, server_config: Config) -> Any:
        return ChromaMemoryStore(server_config)


class TestServerRetrieverContract(RetrieverContract):
    @pytest.fixture
    def retriever(self, server_config: Config) -> Any:
        return ChromaRetriever(server_config)


def test_server_mode_keeps_nothing_on_disk(server_config: Config, tmp_path: Path) -> None:
    store = ChromaMemoryStore(server_config)
    assert store.settings.path is None and store.location.startswith("http://127.0.0.1:")
    assert not (tmp_path / "chroma").exists()


@pytest.mark.anyio
async def test_an_unreachable_server_is_a_storage_error(tmp_path: Path) -> None:
    store = ChromaMemoryStore(Config({"chroma": {"url": f"http://127.0.0.1:{_free_port()}"},
                                      "paths": {"data_dir": str(tmp_path)}}))
    with pytest.raises(StorageError, match=r"cannot open chroma store http://127.0.0.1"):
        await store.namespaces()
