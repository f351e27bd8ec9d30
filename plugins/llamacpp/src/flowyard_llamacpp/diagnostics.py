"""What llama.cpp was built for, what this CPU has, and a real generation check.

``flowyard doctor`` shows these for the ``local`` provider. The generation check runs in a
child process (``python -m flowyard_llamacpp.diagnostics MODEL.gguf``), so a llama.cpp crash
(for example SIGSEGV in the AMX kernels of a native build on a virtualised Intel Sapphire
Rapids host, ggml-org/llama.cpp issue 20824) is reported as a failed check with the signal's
name instead of killing the caller.

The CPU's features come from the ``flags`` line of ``/proc/cpuinfo`` (Linux only; elsewhere
they are unknown). The build's features come from ``llama_print_system_info()``, which prints
``NAME = 1`` for each instruction set the ggml CPU backend was compiled to use.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "CPU_FLAG_FOR_BUILD_FEATURE",
    "GenerationCheck",
    "build_features",
    "cpu_flags",
    "missing_cpu_features",
    "has_amx",
    "run_check_process",
    "run_generation_check",
    "system_info",
]

#: Which ``/proc/cpuinfo`` flag a build feature of ``llama_print_system_info()`` needs.
CPU_FLAG_FOR_BUILD_FEATURE: dict[str, str] = {
    "SSE3": "pni",
    "SSSE3": "ssse3",
    "AVX": "avx",
    "AVX2": "avx2",
    "AVX_VNNI": "avx_vnni",
    "F16C": "f16c",
    "FMA": "fma",
    "BMI2": "bmi2",
    "AVX512": "avx512f",
    "AVX512_VBMI": "avx512vbmi",
    "AVX512_VNNI": "avx512_vnni",
    "AVX512_BF16": "avx512_bf16",
    "AMX_INT8": "amx_int8",
}

_FEATURE = re.compile(r"([A-Z][A-Z0-9_]*)\s*=\s*([01])")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The instruction-set flags of this machine's first CPU.

    Args:
        cpuinfo: the file to read (a path), for tests.

    Returns:
        The lower-case flag names (``{"avx2", "amx_int8", ...}``), or None when the file does
        not exist or has no ``flags`` line (not Linux, or an unusual kernel).
    """
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return None


def has_amx(flags: frozenset[str] | None) -> bool:
    """Whether a CPU with these ``/proc/cpuinfo`` flags has AMX tiles (``amx_tile``/``amx_int8``)."""
    return bool(flags) and bool({"amx_tile", "amx_int8", "amx_bf16"} & set(flags or ()))


def system_info() -> str:
    """llama.cpp's ``llama_print_system_info()`` text (imports ``llama_cpp``)."""
    from flowyard_llamacpp.engine import import_llama_cpp

    llama_cpp = import_llama_cpp()
    raw = llama_cpp.llama_print_system_info()
    return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


def build_features(info: str) -> dict[str, bool]:
    """Parse ``llama_print_system_info()`` into ``{"AVX2": True, "AVX512": False, ...}``.

    Only the CPU section's ``NAME = 0|1`` pairs are read; repeated names keep the first value.
    """
    features: dict[str, bool] = {}
    for name, value in _FEATURE.findall(info):
        features.setdefault(name, value == "1")
    return features


def missing_cpu_features(features: Mapping[str, bool],
                         flags: frozenset[str] | None) -> list[str]:
    """Build features this CPU lacks: code compiled for them stops with SIGILL here.

    Args:
        features: from :func:`build_features`.
        flags: from :func:`cpu_flags` (None: unknown, nothing is reported).

    Returns:
        The build feature names (``["AVX512"]``), empty when everything the build uses exists.
    """
    if flags is None:
        return []
    return [name for name, on in features.items()
            if on and name in CPU_FLAG_FOR_BUILD_FEATURE
            and CPU_FLAG_FOR_BUILD_FEATURE[name] not in flags]


@attrs.frozen
class GenerationCheck:
    """The outcome of :func:`run_generation_check`.

    Attributes:
        ok: the child generated at least one token and exited normally.
        detail: one line for a person: tokens and rate, or what went wrong (the signal's
            name when llama.cpp crashed, the time limit when it hung).
        system_info: llama.cpp's system-info text, when the child got that far.
        tokens: tokens generated (0 on failure).
        seconds: wall time of the generation alone, in seconds (load excluded).
        text: the generated text (a few tokens).
    """

    ok: bool
    detail: str
    system_info: str = ""
    tokens: int = 0
    seconds: float = 0.0
    text: str = ""


async def run_generation_check(model_path: str | Path, *, max_tokens: int = 8,
                               timeout_s: float = 60.0,
                               load_kwargs: Mapping[str, Any] | None = None
                               ) -> GenerationCheck:
    """Load a GGUF model in a child process and greedily generate a few tokens.

    Args:
        model_path: the GGUF file.
        max_tokens: tokens to generate (the check passes with at least one).
        timeout_s: overall limit for the child (start, load, generate), in seconds; the child
            is killed when it passes.
        load_kwargs: extra ``llama_cpp.Llama`` arguments (JSON-serialisable), e.g.
            ``{"n_threads": 1}``.

    Returns:
        A :class:`GenerationCheck`; never raises for a failing or crashing child.
    """
    args = [sys.executable, "-m", "flowyard_llamacpp.diagnostics", str(model_path),
            "--tokens", str(max_tokens), "--kwargs", json.dumps(dict(load_kwargs or {}))]
    return await run_check_process(args, timeout_s=timeout_s)


async def run_check_process(args: list[str], *, timeout_s: float) -> GenerationCheck:
    """Run a check child process and read its last stdout line as the JSON report.

    The report has ``tokens``, ``seconds``, ``system_info`` and ``text``. A child killed by a
    signal, exiting non-zero, printing no JSON or running past ``timeout_s`` seconds gives a
    failed :class:`GenerationCheck` naming what happened (the signal's name, the exit status
    with the last line of stderr, or the time limit).
    """
    import anyio

    started = time.perf_counter()
    try:
        with anyio.fail_after(timeout_s):
            result = await anyio.run_process(args, check=False)
    except TimeoutError:
        return GenerationCheck(False, f"no answer within {timeout_s:g}s (the child was killed)")
    except OSError as exc:
        return GenerationCheck(False, f"cannot start {args[0]}: {exc}")
    elapsed = time.perf_counter() - started
    stdout = result.stdout.decode("utf-8", errors="replace")
    stderr = result.stderr.decode("utf-8", errors="replace").strip()
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        return GenerationCheck(False, f"llama.cpp crashed with {name} after {elapsed:.1f}s "
                               "while loading or generating (see the build finding above and "
                               "docs/plugins/llamacpp.md)")
    try:
        report = json.loads(stdout.strip().splitlines()[-1]) if stdout.strip() else None
    except json.JSONDecodeError:
        report = None
    if result.returncode != 0 or not isinstance(report, dict):
        tail = stderr.splitlines()[-1] if stderr else "no output"
        return GenerationCheck(False, f"the check exited with status {result.returncode}: "
                               f"{tail}")
    tokens = int(report.get("tokens", 0))
    seconds = float(report.get("seconds", 0.0))
    info = str(report.get("system_info", ""))
    if tokens < 1:
        return GenerationCheck(False, "the model generated no token", info)
    rate = tokens / seconds if seconds > 0 else float("inf")
    return GenerationCheck(True, f"generated {tokens} token(s) in {seconds:.2f}s "
                           f"({rate:.0f} tok/s; {elapsed:.1f}s with start-up and load)",
                           info, tokens, seconds, str(report.get("text", "")))


def _child(model_path: str, max_tokens: int, kwargs: dict[str, Any]) -> int:
    """Entry point of the child process: prints one JSON line."""
    from flowyard_llamacpp.engine import llama_load_kwargs

    info = system_info()
    from llama_cpp import Llama

    llm = Llama(**llama_load_kwargs(model_path, n_ctx=512, **kwargs))
    prompt = llm.tokenize(b"The capital of France is", add_bos=True, special=True)
    out: list[int] = []
    started = time.perf_counter()
    for token in llm.generate(prompt, temp=0.0, top_k=1):
        if token == llm.token_eos() or len(out) >= max_tokens:
            break
        out.append(token)
    seconds = time.perf_counter() - started
    text = llm.detokenize(out).decode("utf-8", errors="replace")
    print(json.dumps({"system_info": info, "tokens": len(out), "seconds": seconds,
                      "text": text}), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through run_generation_check
    import argparse

    parser = argparse.ArgumentParser(description="llama.cpp generation check for flowyard doctor")
    parser.add_argument("model_path")
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--kwargs", default="{}")
    ns = parser.parse_args()
    raise SystemExit(_child(ns.model_path, ns.tokens, json.loads(ns.kwargs)))
