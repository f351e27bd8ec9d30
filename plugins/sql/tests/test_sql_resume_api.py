"""``stack.resume(run_id)`` on SQLite, in-process, on asyncio and trio.

A run is cancelled once three step keys are checkpointed; a new stack (as after a restart)
resumes it from the database: checkpointed keys are not run again and the outputs equal an
uninterrupted run's.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import anyio
import flowyard_sql.plugin
import pytest
from flowyard.stack import Stack

pytestmark = pytest.mark.anyio

WORKFLOW = {
    "name": "resume-api",
    "max_concurrency": 2,
    "steps": [
        {"id": "first", "uses": "crashtest.work",
         "with": {"label": "first", "value": 1, "sleep": 0.05}},
        {"id": "each", "uses": "crashtest.work", "depends_on": ["first"],
         "for_each": [1, 2, 3, 4, 5], "max_parallel": 1,
         "with": {"label": "each-{{ item }}", "value": "{{ steps.first.output.digest }}",
                  "sleep": 0.15}},
        {"id": "last", "uses": "crashtest.work",
         "with": {"label": "last", "value": "{{ steps.each.output }}", "sleep": 0.05}},
    ],
    "outputs": {"last": "{{ steps.last.output.digest }}"},
}


def _plugin() -> Any:
    path = Path(__file__).with_name("sql_crash_plugin.py")
    spec = importlib.util.spec_from_file_location("sql_crash_plugin_api", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _stack(url: str) -> Stack:
    return Stack([("crashtest", _plugin()), ("sql", flowyard_sql.plugin)],
                 config={"storage": {"url": url}})


def _effects(directory: Path) -> dict[str, int]:
    return {p.name.removesuffix(".effects"): len(p.read_text().split())
            for p in directory.glob("*.effects")}


async def test_stack_resume_continues_a_stopped_run(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    reference_dir, effects_dir = tmp_path / "reference", tmp_path / "effects"
    reference_dir.mkdir()
    effects_dir.mkdir()

    monkeypatch.setenv("CRASHTEST_DIR", str(reference_dir))
    async with _stack(f"sqlite:///{tmp_path / 'reference.db'}") as stack:
        reference = await stack.run(WORKFLOW, run_id="reference")
    assert reference.status == "completed"

    monkeypatch.setenv("CRASHTEST_DIR", str(effects_dir))
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    async with _stack(url) as stack:
        async with anyio.create_task_group() as tg:

            async def stop_after_three() -> None:
                while len(await stack.storage.load_checkpoints("stopped")) < 3:
                    await anyio.sleep(0.01)
                tg.cancel_scope.cancel()

            tg.start_soon(stop_after_three)
            await stack.run(WORKFLOW, run_id="stopped")
            raise AssertionError("the run finished before it was stopped")
        done_before = set(await stack.storage.load_checkpoints("stopped"))
    items_done = {k for k in done_before if k.startswith("each[")}
    assert "first" in done_before and len(items_done) >= 2
    assert "last" not in done_before and len(items_done) < 5

    async with _stack(url) as stack:  # a new stack, as after a restart
        resumed = await stack.resume("stopped")
        record = await stack.storage.get_run("stopped")
    assert resumed.status == "completed" and record.resume_count == 1
    assert resumed.outputs == reference.outputs
    assert {k: v.output for k, v in resumed.steps.items()} == {
        k: v.output for k, v in reference.steps.items()}
    counts = _effects(effects_dir)
    for key in done_before - {"each"}:
        assert counts[key] == 1, f"checkpointed step {key} ran again"
    assert counts["last"] == 1
