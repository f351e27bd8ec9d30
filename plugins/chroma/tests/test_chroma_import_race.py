"""memory.add and rag.index started at the same time in a fresh process: their first use
imports numpy, chromadb and bm25s from two worker threads at once, which used to fail with
"cannot import name ... from partially initialized module 'numpy._typing'"."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = """
import sys
from flowyard.stack import Stack

home = sys.argv[1]
workflow = {"name": "race", "steps": [
    {"id": "remember", "uses": "memory.add",
     "with": {"text": "The sky is blue.", "namespace": "notes"}},
    {"id": "index", "uses": "rag.index",
     "with": {"texts": ["Python has a global statement.", "with uses a context manager."]}},
], "outputs": {"memory": "${remember}", "index": "${index}"}}
stack = Stack.default(config={"storage": {"url": "memory://"},
                              "chroma": {"path": home + "/chroma"},
                              "paths": {"data_dir": home}})
result = stack.run_sync(workflow)
errors = [s.error for s in result.steps.values() if s.error]
print(result.status, errors)
"""


@pytest.mark.parametrize("attempt", range(2))
def test_parallel_first_use_of_memory_and_rag_in_a_fresh_process(tmp_path: Path,
                                                                   attempt: int) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "completed []", done.stdout
