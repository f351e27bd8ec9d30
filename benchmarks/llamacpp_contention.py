"""Tokens per second of the local model when another process keeps one core busy.

On a 2-core machine a llama.cpp context with two OpenMP threads that spin while they wait was
measured at 0.9 s for a 64-token answer in one run and 46 s in the next, when one core was
taken by another process: the spinning thread steals the core from the thread it waits for.
flowyard gives each context ``cores // pool_size`` threads (never more threads than cores
across the contexts that may run at once) and loads llama.cpp with ``OMP_WAIT_POLICY=PASSIVE``
(see ``flowyard_llamacpp.engine.import_llama_cpp``).

Each configuration runs in its own child process (the OpenMP policy is read when the library
loads), once on a quiet machine and once with one busy-looping process per ``--busy``, in
alternating order over ``--repeat`` rounds. A run answers a RAG-sized prompt (about 400
tokens, evaluated afresh in every run on every side, as each question of the main job brings
its own context) with 64 greedy tokens; the figure is output tokens per second
of wall time. Printed: the median rate quiet and busy per configuration, and busy/quiet
(target for flowyard: at least 0.4), plus each configuration against llama-cpp-python's own
defaults measured in the same run.

Configurations:

- ``llama-cpp-python defaults``: ``Llama(model_path, n_ctx)``, no thread arguments, the
  environment's OpenMP policy (GNU OpenMP spins before sleeping): the baseline.
- ``flowyard``: ``stack.llm.chat`` on ``local/smollm2``, one context (the path users take).
- ``flowyard, 2 at once``: two chats at the same time on a model with ``pool_size = 2`` (what
  the main job does with ``max_parallel: 2``); the rate is both answers' tokens together.

Usage::

    .venv/bin/python benchmarks/llamacpp_contention.py [--repeat 3] [--busy 1]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

TOKENS = 64
CONTEXT = " ".join(
    ["The global statement is a declaration which holds for the entire current code block. "
     "It means that the listed identifiers are to be interpreted as globals."] * 12)
QUESTION = "What does the global statement do?"
CONFIGS = ["llama-cpp-python defaults", "flowyard", "flowyard, 2 at once"]


def _child(config: str, runs: int) -> None:
    """Measure one configuration in this process; print {"rate": tokens/s median}."""
    rates: list[float] = []
    if config == "llama-cpp-python defaults":
        from flowyard_llamacpp.spec import smollm2_path
        from llama_cpp import Llama

        llm = Llama(model_path=str(smollm2_path()), n_ctx=2048, verbose=False)
        messages = [{"role": "user", "content": f"{CONTEXT}\n\n{QUESTION}"}]
        llm.create_chat_completion(messages, max_tokens=4, temperature=0.0)  # warm-up
        for _ in range(runs):
            llm.reset()  # evaluate the whole prompt, as flowyard's seeded call does
            started = time.perf_counter()
            out = llm.create_chat_completion(messages, max_tokens=TOKENS, temperature=0.0)
            rates.append(out["usage"]["completion_tokens"] / (time.perf_counter() - started))
    else:
        import anyio
        from flowyard.models import Message
        from flowyard.stack import Stack

        parallel = 2 if config == "flowyard, 2 at once" else 1
        stack = Stack(discover=True, config={
            "storage": {"url": "memory://"},
            "llamacpp": {"models": {"smollm2": {"pool_size": parallel, "n_ctx": 2048}}}})

        async def one() -> int:
            response = await stack.llm.chat(
                [Message.user(f"{CONTEXT}\n\n{QUESTION}")], model="local/smollm2",
                max_tokens=TOKENS, temperature=0.0, seed=0)
            return response.usage.output_tokens

        async def main() -> None:
            async with anyio.create_task_group() as tg:  # warm-up: load every context
                for _ in range(parallel):
                    tg.start_soon(one)
            for _ in range(runs):
                counts: list[int] = []

                async def run_one() -> None:
                    counts.append(await one())

                started = time.perf_counter()
                async with anyio.create_task_group() as tg:
                    for _ in range(parallel):
                        tg.start_soon(run_one)
                rates.append(sum(counts) / (time.perf_counter() - started))
            await stack.aclose()

        anyio.run(main)
    print(json.dumps({"rate": statistics.median(rates)}))


def _measure(config: str, runs: int, busy: int) -> float:
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    try:
        if hogs:
            time.sleep(0.5)  # let the scheduler see them
        done = subprocess.run([sys.executable, __file__, "--child", config, "--runs", str(runs)],
                              capture_output=True, text=True, check=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    return float(json.loads(done.stdout.strip().splitlines()[-1])["rate"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds of every measurement")
    parser.add_argument("--runs", type=int, default=3, help="generations per measurement")
    parser.add_argument("--busy", type=int, default=1, help="busy-looping processes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child, args.runs)
        return
    quiet: dict[str, list[float]] = {c: [] for c in CONFIGS}
    busy: dict[str, list[float]] = {c: [] for c in CONFIGS}
    for round_no in range(args.repeat):
        for config in CONFIGS:
            order = [(quiet, 0), (busy, args.busy)]
            if round_no % 2:
                order.reverse()
            for table, hogs in order:
                table[config].append(_measure(config, args.runs, hogs))
    cores = len(os.sched_getaffinity(0))
    print(f"local/smollm2, {TOKENS} greedy output tokens after a ~400-token prompt, "
          f"{cores} cores, {args.busy} busy process(es), median of {args.repeat} rounds "
          f"x {args.runs} runs, output tokens/s:")
    base_q = statistics.median(quiet[CONFIGS[0]])
    base_b = statistics.median(busy[CONFIGS[0]])
    print(f"  {'configuration':28s} {'quiet':>7s} {'busy':>7s} {'busy/quiet':>10s} "
          f"{'quiet vs defaults':>17s} {'busy vs defaults':>16s}")
    for config in CONFIGS:
        q = statistics.median(quiet[config])
        b = statistics.median(busy[config])
        print(f"  {config:28s} {q:7.1f} {b:7.1f} {b / q:10.2f} {q / base_q:17.2f} "
              f"{b / base_b:16.2f}")
    print("target: flowyard busy/quiet >= 0.4")


if __name__ == "__main__":
    main()
