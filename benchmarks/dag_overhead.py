"""Engine overhead per step: flowyard against a hand-written anyio scheduler and LangGraph.

Targets (issue 17): on every shape, a realistic flowyard step with memory storage costs at most
3x the hand-written scheduler, and with SQLite at most LangGraph's SQLite checkpointer.

Same DAGs, same no-op async step function, each step receiving its predecessors' outputs:

* ``fanout N``: 1 -> N -> 1 (one root, N parallel children, one join of all N);
* ``chain 1000``: each step depends on the previous one;
* ``layers 20x50``: 20 layers of 50 steps, each depending on two steps of the layer above.

Systems, all measured in this one run (microseconds per step, median of ``--repeat``):

* ``hand-written anyio``: one task per step in one task group, waiting on the parents'
  ``anyio.Event``, a ``CapacityLimiter(--limit)``, calling ``noop([parents' outputs])``;
* ``flowyard memory`` / ``flowyard sqlite``: flowyard driven as a user would: a dict workflow
  whose steps call a ``@flowyard.tool`` (``bench.step``) registered by a plugin's
  ``register_tools`` hook, each step's ``with: {inputs: ["${parent}", ...]}`` (dependencies
  implied by the references), ``await stack.run(workflow, max_concurrency=--limit)`` with a
  listener subscribed to the event bus; storage ``memory://`` or
  ``sqlite:///<tmp>/runs.db`` (flowyard-sql, its default settings);
* ``flowyard echo memory``: the built-in ``echo`` action with ``depends_on`` and no data flow
  (the path ``benchmarks/dag_overhead.py`` measures), memory storage;
* ``LangGraph memory`` / ``LangGraph sqlite``: a ``StateGraph`` of the same shape, one async
  node per step, one state key per step (a ``LastValue`` channel; a node reads its parents'
  keys and writes its own), joins as ``add_edge([parents], node)``; compiled without a
  checkpointer, or with ``AsyncSqliteSaver`` on a file in a temporary directory, a new
  ``thread_id`` per run, ``max_concurrency=--limit``. Each runs in its own process from a
  virtualenv this script creates on demand under ``.bench-venvs/langgraph`` with the versions
  pinned in ``benchmarks/langgraph-requirements.txt`` (uv when it finds one, else venv + pip);
  LangGraph runs on asyncio only.

Build/validation time (``stack.load_workflow`` of the dict, once per shape) is reported per
step separately; it is not part of the run times.

Usage::

    .venv/bin/python benchmarks/dag_overhead.py [--quick] [--repeat 3] [--limit 64]
        [--backend asyncio|trio] [--no-langgraph]
        [--profile [--profile-width 1000] [--profile-storage memory|sqlite]]

``--quick`` runs fan-out 1000 and 2000 (instead of 5000), chain 1000 and layers 20x50, three
repeats by default (the full sizes: two, to stay near 5 minutes on 2 cores). ``--profile``
only runs the flowyard realistic fan-out (memory or SQLite storage) under cProfile and prints
the top 15 functions by cumulative and by own time.

``fanout``, ``chain``, ``layers`` and ``as_workflow`` (the echo workflow) are also used by
``benchmarks/storage_overhead.py``.
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".bench-venvs" / "langgraph"
LANGGRAPH_PINS = Path(__file__).with_name("langgraph-requirements.txt")

Dag = dict[str, list[str]]


# --- shapes -------------------------------------------------------------------------------

def fanout(width: int = 5000) -> Dag:
    dag: Dag = {"root": []}
    for i in range(width):
        dag[f"n{i}"] = ["root"]
    dag["join"] = [f"n{i}" for i in range(width)]
    return dag


def chain(length: int = 1000) -> Dag:
    return {f"s{i}": ([f"s{i - 1}"] if i else []) for i in range(length)}


def layers(depth: int = 20, width: int = 50) -> Dag:
    dag: Dag = {}
    for d in range(depth):
        for w in range(width):
            parents = [] if d == 0 else [f"l{d - 1}_{w}", f"l{d - 1}_{(w + 1) % width}"]
            dag[f"l{d}_{w}"] = parents
    return dag


def shapes(quick: bool) -> dict[str, Dag]:
    big = 2000 if quick else 5000
    return {"fan-out 1000": fanout(1000), f"fan-out {big}": fanout(big),
            "chain 1000": chain(1000), "20x50 layers": layers(20, 50)}


def expected_outputs(dag: Dag) -> dict[str, int]:
    """What ``noop`` gives every step: the number of inputs it received."""
    return {name: len(parents) for name, parents in dag.items()}


async def noop(inputs: list[Any]) -> int:
    """The step function of every system: receives its parents' outputs, returns their count."""
    return len(inputs)


# --- hand-written anyio scheduler ---------------------------------------------------------

async def hand_written(dag: Dag, limit: int) -> dict[str, Any]:
    import anyio

    done = {name: anyio.Event() for name in dag}
    limiter = anyio.CapacityLimiter(limit)
    results: dict[str, Any] = {}

    async def run(name: str) -> None:
        parents = dag[name]
        for parent in parents:
            await done[parent].wait()
        async with limiter:
            results[name] = await noop([results[p] for p in parents])
        done[name].set()

    async with anyio.create_task_group() as tg:
        for name in dag:
            tg.start_soon(run, name)
    return results


# --- flowyard -----------------------------------------------------------------------------

def _bench_plugin() -> Any:
    import flowyard

    @flowyard.tool(name="bench.step", idempotent=True)
    async def bench_step(inputs: list) -> int:  # type: ignore[type-arg]
        """One no-op benchmark step.

        Args:
            inputs: the outputs of the step's predecessors.
        """
        return await noop(inputs)

    class BenchTools:
        @flowyard.hookimpl
        def register_tools(self, register: Any, config: Any) -> None:
            register("bench.step", bench_step)

    return BenchTools()


def realistic_workflow(name: str, dag: Dag) -> dict[str, Any]:
    return {"name": name, "steps": [
        {"id": node, "uses": "bench.step", "with": {"inputs": [f"${{{p}}}" for p in parents]}}
        for node, parents in dag.items()]}


def echo_workflow(name: str, dag: Dag) -> dict[str, Any]:
    return {"name": name, "steps": [{"id": node, "uses": "echo", "depends_on": parents}
                                    for node, parents in dag.items()]}


as_workflow = echo_workflow  # the name benchmarks/storage_overhead.py imports


async def _timed(coro_fn: Any, *args: Any) -> tuple[float, float, Any]:
    gc.collect()
    started, cpu = time.perf_counter(), time.process_time()
    out = await coro_fn(*args)
    return time.perf_counter() - started, time.process_time() - cpu, out


def _stack(storage_url: str, events: list[Any]) -> Any:
    from flowyard.stack import Stack

    plugins: list[Any] = [("bench", _bench_plugin())]
    if storage_url.startswith("sqlite"):
        import flowyard_sql.plugin

        plugins.append(("sql", flowyard_sql.plugin))
    stack = Stack(plugins, config={"storage": {"url": storage_url}})
    stack.events.subscribe(lambda event: events.append(1))  # events on: a listener sees all
    return stack


async def measure_anyio(graphs: dict[str, Dag], repeat: int, limit: int,
                        tmp: str) -> dict[str, Any]:
    """Return {system: {shape: {wall, cpu}}} per step, and validation times per step."""
    from contextlib import AsyncExitStack

    walls: dict[str, dict[str, list[float]]] = {}
    cpus: dict[str, dict[str, list[float]]] = {}
    validate: dict[str, dict[str, float]] = {"flowyard (${id} tool)": {}, "flowyard echo": {}}
    counts: dict[str, dict[str, int]] = {}

    def note(system: str, shape: str, wall: float, cpu: float, steps: int) -> None:
        walls.setdefault(system, {}).setdefault(shape, []).append(wall / steps * 1e6)
        cpus.setdefault(system, {}).setdefault(shape, []).append(cpu / steps * 1e6)

    ev_mem: list[Any] = []
    ev_sql: list[Any] = []
    async with AsyncExitStack() as exits:
        mem = await exits.enter_async_context(_stack("memory://", ev_mem))
        sql = await exits.enter_async_context(_stack(f"sqlite:///{tmp}/runs.db", ev_sql))
        for shape, dag in graphs.items():
            steps = len(dag)
            want = expected_outputs(dag)
            started = time.perf_counter()
            wf_mem = mem.load_workflow(realistic_workflow(shape, dag))
            validate["flowyard (${id} tool)"][shape] = (time.perf_counter() - started) / steps * 1e6
            wf_sql = sql.load_workflow(realistic_workflow(shape, dag))
            started = time.perf_counter()
            wf_echo = mem.load_workflow(echo_workflow(shape, dag))
            validate["flowyard echo"][shape] = (time.perf_counter() - started) / steps * 1e6
            # one small warm-up each (imports, first compilations, the SQLite schema)
            warm = {k: v for k, v in list(dag.items())[:1]}
            await mem.run(realistic_workflow("warm", warm), max_concurrency=limit)
            await sql.run(realistic_workflow("warm", warm), max_concurrency=limit)
            for _ in range(repeat):
                wall, cpu, out = await _timed(hand_written, dag, limit)
                assert out == want
                note("hand-written anyio", shape, wall, cpu, steps)
                for system, stack, wf, events in (
                        ("flowyard memory", mem, wf_mem, ev_mem),
                        ("flowyard sqlite", sql, wf_sql, ev_sql),
                        ("flowyard echo memory", mem, wf_echo, ev_mem)):
                    before = len(events)
                    wall, cpu, result = await _timed(functools.partial(
                        stack.run, wf, max_concurrency=limit))
                    assert result.ok, (system, shape, result.error)
                    if "echo" not in system:
                        got = {k: s.output for k, s in result.steps.items()}
                        assert got == want, (system, shape)
                    assert len(events) - before >= 2 * steps, (system, len(events) - before)
                    counts.setdefault(system, {})[shape] = len(events) - before
                    note(system, shape, wall, cpu, steps)
    return {"wall": {s: {k: statistics.median(v) for k, v in d.items()} for s, d in walls.items()},
            "cpu": {s: {k: statistics.median(v) for k, v in d.items()} for s, d in cpus.items()},
            "validate": validate, "events": counts}


# --- LangGraph (own process, own virtualenv) ----------------------------------------------

def _find_uv() -> str | None:
    import shutil

    for candidate in (os.environ.get("UV"), str(ROOT / ".venv" / "bin" / "uv"),
                      str(ROOT / ".dist-venvs" / ".tools" / "bin" / "uv"), shutil.which("uv")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def ensure_langgraph_venv() -> Path:
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import langgraph.graph, langgraph.checkpoint.sqlite.aio"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    print(f"creating {VENV} ({LANGGRAPH_PINS.name}) ...", file=sys.stderr)
    uv = _find_uv()
    if uv is not None:
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(VENV)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(python), "-r",
                        str(LANGGRAPH_PINS)], check=True)
    else:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q",
                        "--disable-pip-version-check", "-r", str(LANGGRAPH_PINS)], check=True)
    subprocess.run(check, check=True)
    return python


def langgraph_graph(dag: Dag) -> Any:
    from typing import TypedDict

    from langgraph.graph import END, START, StateGraph

    key = {name: f"o_{name}" for name in dag}  # a node name cannot also be a state key
    State = TypedDict("State", {"seed": int, **{k: Any for k in key.values()}})  # type: ignore
    graph = StateGraph(State)
    children: set[str] = set()

    def node_fn(name: str, parents: list[str]) -> Any:
        own, keys = key[name], [key[p] for p in parents]

        async def node(state: dict[str, Any]) -> dict[str, Any]:
            return {own: await noop([state[k] for k in keys])}

        return node

    for name, parents in dag.items():
        graph.add_node(name, node_fn(name, parents))
        if not parents:
            graph.add_edge(START, name)
        elif len(parents) == 1:
            graph.add_edge(parents[0], name)
        else:
            graph.add_edge(list(parents), name)  # waits for all of them
        children.update(parents)
    for name in dag:
        if name not in children:
            graph.add_edge(name, END)
    return graph, key


async def langgraph_worker(mode: str, graphs: dict[str, Dag], repeat: int, limit: int) -> None:
    import importlib.metadata as md

    out: dict[str, Any] = {"version": md.version("langgraph"), "wall": {}, "cpu": {},
                           "errors": {}, "notes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        saver_cm = None
        saver = None
        if mode == "sqlite":
            from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

            saver_cm = AsyncSqliteSaver.from_conn_string(f"{tmp}/checkpoints.db")
            saver = await saver_cm.__aenter__()
            async with saver.conn.execute("PRAGMA synchronous") as cur:
                sync = (await cur.fetchone())[0]
            async with saver.conn.execute("PRAGMA journal_mode") as cur:
                journal = (await cur.fetchone())[0]
            out["notes"]["sqlite"] = (f"journal_mode={journal} synchronous="
                                      f"{ {0: 'OFF', 1: 'NORMAL', 2: 'FULL', 3: 'EXTRA'}[sync]}")
        try:
            run_id = 0
            warm, _ = langgraph_graph(chain(2))  # one small warm-up (imports, the schema)
            await warm.compile(checkpointer=saver).ainvoke(
                {"seed": 0}, {"configurable": {"thread_id": "warm"}})
            for shape, dag in graphs.items():
                try:
                    builder, key = langgraph_graph(dag)
                    graph = builder.compile(checkpointer=saver)
                    want = {key[k]: v for k, v in expected_outputs(dag).items()}
                    walls, cpus = [], []
                    for _ in range(repeat):
                        run_id += 1
                        config = {"configurable": {"thread_id": f"t{run_id}"},
                                  "recursion_limit": len(dag) + 10, "max_concurrency": limit}
                        gc.collect()
                        started, cpu = time.perf_counter(), time.process_time()
                        state = await graph.ainvoke({"seed": 0}, config)
                        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
                        got = {k: v for k, v in state.items() if k != "seed"}
                        assert got == want, shape
                        walls.append(wall / len(dag) * 1e6)
                        cpus.append(cpu / len(dag) * 1e6)
                    out["wall"][shape] = statistics.median(walls)
                    out["cpu"][shape] = statistics.median(cpus)
                except Exception as exc:  # noqa: BLE001 - reported as "cannot express"
                    out["errors"][shape] = f"{type(exc).__name__}: {exc}"[:300]
        finally:
            if saver_cm is not None:
                await saver_cm.__aexit__(None, None, None)
    print(json.dumps(out))


def run_langgraph(mode: str, quick: bool, repeat: int, limit: int) -> dict[str, Any]:
    python = ensure_langgraph_venv()
    cmd = [str(python), str(Path(__file__).resolve()), "--langgraph-worker", mode,
           "--repeat", str(repeat), "--limit", str(limit)] + (["--quick"] if quick else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"wall": {}, "cpu": {}, "errors": {"*": proc.stderr.strip()[-500:]}, "notes": {}}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --- report -------------------------------------------------------------------------------

ORDER = ["hand-written anyio", "flowyard memory", "flowyard sqlite", "flowyard echo memory",
         "LangGraph memory", "LangGraph sqlite"]


def _table(title: str, data: dict[str, dict[str, float]], shape_names: list[str]) -> None:
    base = data.get("hand-written anyio", {})
    width = max(14, *(len(s) + 2 for s in shape_names))
    print(f"\n{title}")
    print(f"{'system':24}" + "".join(f"{s:>{width}}" for s in shape_names))
    for system in ORDER:
        if system not in data:
            continue
        cells = []
        for shape in shape_names:
            v = data[system].get(shape)
            cells.append(f"{'n/a':>{width}}" if v is None else f"{v:>{width},.1f}")
        print(f"{system:24}" + "".join(cells))
    print("ratio vs hand-written (target: flowyard memory <= 3x)")
    for system in ORDER[1:]:
        if system not in data:
            continue
        cells = []
        for shape in shape_names:
            v, b = data[system].get(shape), base.get(shape)
            cells.append(f"{'n/a':>{width}}" if v is None or not b else f"{v / b:>{width - 1}.2f}x")
        print(f"{system:24}" + "".join(cells))
    if "flowyard sqlite" in data and "LangGraph sqlite" in data:
        cells = []
        for shape in shape_names:
            v, b = data["flowyard sqlite"].get(shape), data["LangGraph sqlite"].get(shape)
            cells.append(f"{'n/a':>{width}}" if v is None or not b else f"{v / b:>{width - 1}.2f}x")
        print(f"{'fy-sqlite / LG-sqlite':24}" + "".join(cells) + "   (target: <= 1x)")
    if "flowyard memory" in data and "LangGraph memory" in data:
        cells = []
        for shape in shape_names:
            v, b = data["flowyard memory"].get(shape), data["LangGraph memory"].get(shape)
            cells.append(f"{'n/a':>{width}}" if v is None or not b else f"{v / b:>{width - 1}.2f}x")
        print(f"{'fy-memory / LG-memory':24}" + "".join(cells))


def profile(width: int, backend: str, limit: int, storage: str) -> None:
    import cProfile
    import io
    import pstats

    import anyio

    dag = fanout(width)

    async def main() -> Any:
        events: list[Any] = []
        tmp = tempfile.mkdtemp()
        url = "memory://" if storage == "memory" else f"sqlite:///{tmp}/runs.db"
        async with _stack(url, events) as stack:
            workflow = stack.load_workflow(realistic_workflow(f"fan-out {width}", dag))
            await stack.run(realistic_workflow("warm", {"root": []}), max_concurrency=limit)
            profiler = cProfile.Profile()
            gc.collect()
            started = time.perf_counter()
            profiler.enable()
            result = await stack.run(workflow, max_concurrency=limit)
            profiler.disable()
            elapsed = time.perf_counter() - started
            assert result.ok, result.error
            return profiler, elapsed

    profiler, elapsed = anyio.run(main, backend=backend)
    print(f"profile: flowyard {storage}, realistic fan-out 1->{width}->1 ({len(dag)} steps), "
          f"backend={backend}, limit={limit}: {elapsed:.2f} s under cProfile "
          f"({elapsed / len(dag) * 1e6:,.0f} µs/step)")
    for key, title in (("cumulative", "cumulative time"), ("tottime", "own time")):
        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf)
        stats.strip_dirs().sort_stats(key).print_stats(15)
        text = buf.getvalue()
        body = text[text.index("   ncalls"):] if "   ncalls" in text else text
        print(f"\ntop 15 by {title}:\n{body.rstrip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--repeat", type=int, default=None,
                        help="runs per system and shape, median reported (default 2, so the "
                        "default run stays near 5 minutes on 2 cores; --quick: 3)")
    parser.add_argument("--limit", type=int, default=64, help="concurrency limit of all")
    parser.add_argument("--quick", action="store_true", help="fan-out 2000 instead of 5000")
    parser.add_argument("--no-langgraph", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="only profile the flowyard realistic fan-out (see --profile-storage)")
    parser.add_argument("--profile-width", type=int, default=1000)
    parser.add_argument("--profile-storage", choices=["memory", "sqlite"], default="memory")
    parser.add_argument("--langgraph-worker", choices=["memory", "sqlite"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    repeat = args.repeat or (3 if args.quick else 2)
    graphs = shapes(args.quick)

    if args.langgraph_worker:
        import asyncio

        asyncio.run(langgraph_worker(args.langgraph_worker, graphs, repeat, args.limit))
        return
    if args.profile:
        profile(args.profile_width, args.backend, args.limit, args.profile_storage)
        return

    import anyio

    total = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = anyio.run(measure_anyio, graphs, repeat, args.limit, tmp, backend=args.backend)
    lg: dict[str, Any] = {}
    if not args.no_langgraph:
        for mode in ("memory", "sqlite"):
            lg[mode] = run_langgraph(mode, args.quick, repeat, args.limit)
            for what in ("wall", "cpu"):
                res[what][f"LangGraph {mode}"] = lg[mode][what]

    names = list(graphs)
    print(f"backend={args.backend} (LangGraph: asyncio, own process) limit={args.limit} "
          f"repeat={repeat} (medians) python={sys.version.split()[0]} cpus={os.cpu_count()}")
    print("steps: " + ", ".join(f"{s}={len(d)}" for s, d in graphs.items()))
    _table("wall clock, µs per step", res["wall"], names)
    _table("process CPU time, µs per step (LangGraph: its own process)", res["cpu"], names)
    print("\nbuild/validation (stack.load_workflow of the dict), µs per step")
    for system, per in res["validate"].items():
        print(f"{system:24}" + "".join(f"{per[s]:>14,.1f}" for s in names))
    print("\nevents seen by the listener per run: " + "; ".join(
        f"{system}: " + ", ".join(f"{s}={n}" for s, n in per.items())
        for system, per in res["events"].items()))
    for mode, data in lg.items():
        if data.get("version"):
            print(f"LangGraph {mode}: langgraph {data['version']}; per-node state keys "
                  f"(LastValue channels), joins as add_edge([parents], node)"
                  + (f"; checkpointer AsyncSqliteSaver, {data['notes']['sqlite']}"
                     if data["notes"].get("sqlite") else ""))
        for shape, err in data.get("errors", {}).items():
            print(f"LangGraph {mode} could not run {shape}: {err}")
    print(f"total benchmark time {time.perf_counter() - total:.0f} s")


if __name__ == "__main__":
    main()
