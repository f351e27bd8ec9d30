"""An audit appender process for the concurrency test (run as a script, not collected).

Usage: python sql_audit_writer.py URL WRITER_ID COUNT GO_FILE

Opens the storage, writes GO_FILE.ready<WRITER_ID> and waits until GO_FILE exists (so every
writer starts appending together, however late its process started), then appends COUNT
audit records one append at a time (every other one a batch of two). Exits 0 on
success; any error is printed and exits 1.
"""

from __future__ import annotations

import os
import sys
import time

import anyio
from flowyard.models import AuditRecord
from flowyard_sql.storage import SQLStorage


async def main(url: str, writer: int, count: int, go_file: str) -> None:
    storage = SQLStorage(url)
    await storage.open()
    try:
        with open(f"{go_file}.ready{writer}", "w"):
            pass
        while not os.path.exists(go_file):
            time.sleep(0.005)
        done = 0
        while done < count:
            size = 2 if done % 3 == 1 and done + 2 <= count else 1
            await storage.append_audit([
                AuditRecord(action="test.append", actor=f"user:w{writer}",
                            details={"writer": writer, "n": done + k}) for k in range(size)])
            done += size
    finally:
        await storage.close()


if __name__ == "__main__":
    anyio.run(main, sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
