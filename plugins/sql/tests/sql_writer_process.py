"""A writer process for the concurrency test (run as a script, not collected by pytest).

Usage: python sql_writer_process.py URL WRITER_ID BATCHES BATCH_SIZE GO_FILE

Waits until GO_FILE exists (so every writer starts together), opens the storage (the first
openers race to create the schema), creates its run, then appends BATCHES batches of
BATCH_SIZE events to its own run and to the shared run "shared", a checkpoint per batch, a log
line and a cost line per batch. Exits 0 on success; any error is printed and exits 1.
"""

from __future__ import annotations

import os
import sys
import time

import anyio
from flowyard.models import CostLine, Event, LogRecord, RunRecord
from flowyard_sql.storage import SQLStorage


async def main(url: str, writer: int, batches: int, size: int, go_file: str) -> None:
    while not os.path.exists(go_file):
        time.sleep(0.005)
    storage = SQLStorage(url)
    await storage.open()
    run_id = f"writer-{writer}"
    await storage.create_run(RunRecord(id=run_id, workflow_name="concurrency"))
    seq = 0
    for batch in range(batches):
        own = []
        shared = []
        for _ in range(size):
            seq += 1
            own.append(Event(type="test.tick", run_id=run_id, seq=seq, data={"w": writer}))
            shared.append(Event(type="test.tick", run_id="shared", seq=writer * 1_000_000 + seq,
                                data={"w": writer}))
        await storage.append_events(own)
        await storage.append_events(shared)
        await storage.save_checkpoint(run_id, f"step[{batch}]", {"batch": batch})
        await storage.append_log(LogRecord(run_id=run_id, message=f"batch {batch}"))
        await storage.add_cost(CostLine(run_id=run_id, provider="fake", model="priced",
                                        input_tokens=1, output_tokens=1, cost_usd=0.001))
    await storage.close()


if __name__ == "__main__":
    url, writer, batches, size, go = sys.argv[1:6]
    anyio.run(main, url, int(writer), int(batches), int(size), go)
