"""Wall time of `flowyard --help` (target: under 0.3 s), against baselines in the same run.

Baselines: the bare interpreter (`python -c pass`) and a bare click program printing its help.
The CLI loads every installed plugin's module to list plugin commands, so this measures
plugin discovery too.

Usage: .venv/bin/python benchmarks/cli_help_time.py [--runs 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent
CLICK_HELP = "import click\n@click.group()\ndef c():\n    'x'\nc(['--help'])"


def wall(cmd: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "bare click --help": [sys.executable, "-c", CLICK_HELP],
        "flowyard --help": [str(BIN / "flowyard"), "--help"],
        "flowyard --version": [str(BIN / "flowyard"), "--version"],
    }
    for cmd in cases.values():  # warm the OS caches
        wall(cmd, 2)
    results = {name: wall(cmd, args.runs) for name, cmd in cases.items()}
    base = statistics.median(results["python -c pass"])
    print(f"{'command':<22}{'median s':>10}{'p90 s':>10}{'x python':>10}")
    for name, times in results.items():
        med = statistics.median(times)
        p90 = sorted(times)[int(0.9 * (len(times) - 1))]
        print(f"{name:<22}{med:>10.3f}{p90:>10.3f}{med / base:>10.2f}")
    help_median = statistics.median(results["flowyard --help"])
    verdict = "OK" if help_median < 0.3 else "OVER TARGET"
    print(f"flowyard --help median {help_median:.3f} s (target < 0.300 s): {verdict}")


if __name__ == "__main__":
    main()
