"""Batch summarization on real input: the license files that installed packages carry.

Copies the license texts of up to N installed distributions into a work folder, then runs
`workflow.yaml` on it with the default stack (SQLite storage, the local SmolLM2 model), with
the filesystem tool confined to that folder.

Usage: python examples/batch-summarize/run.py [--files 6] [--out out/batch-summarize]
"""

from __future__ import annotations

import argparse
import json
import re
from importlib import metadata
from pathlib import Path

from flowyard import Stack

HERE = Path(__file__).resolve().parent
LICENSE_NAME = re.compile(r"(^|/)(LICEN[SC]E|COPYING)(\.(txt|md|rst))?$", re.IGNORECASE)


def collect_licenses(target: Path, limit: int) -> list[Path]:
    """Copy up to ``limit`` license files of installed distributions into ``target``.

    Returns the files written (named after their distribution, with a .txt suffix).
    """
    target.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"].lower()):
        if len(written) >= limit:
            break
        for file in dist.files or []:
            if LICENSE_NAME.search(str(file)):
                text = Path(dist.locate_file(file)).read_text(encoding="utf-8", errors="replace")
                if len(text.split()) < 50:
                    continue
                dest = target / f"{dist.metadata['Name'].lower()}.txt"
                dest.write_text(text, encoding="utf-8")
                written.append(dest)
                break
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("out/batch-summarize"))
    parser.add_argument("--model", default="local/smollm2")
    args = parser.parse_args()
    root = args.out.resolve()
    files = collect_licenses(root / "licenses", args.files)
    print(f"collected {len(files)} license files into {root / 'licenses'}")
    stack = Stack.default(config={"filesystem": {"root": str(root)}})
    result = stack.run_sync(HERE / "workflow.yaml",
                            {"max_files": args.files, "model": args.model})
    print(json.dumps({"status": result.status, "run_id": result.run_id,
                      "outputs": result.outputs}, indent=2))
    if result.status != "completed":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
