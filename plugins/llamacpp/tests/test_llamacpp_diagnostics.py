"""What `flowyard doctor` learns from the local provider: build and CPU features, threads, and a
real generation in a child process whose crash or hang is a finding, not a crash of doctor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from flowyard.interfaces import Diagnostic, SupportsDiagnostics
from flowyard_llamacpp import LlamaCppProvider, diagnostics, engine
from flowyard_llamacpp.spec import ModelSpec, smollm2_path

pytestmark = [pytest.mark.anyio]

INTEL_AMX_FLAGS = ("fpu vme pni ssse3 fma f16c avx avx2 bmi2 avx512f avx512_vnni avx512_bf16 "
                   "amx_bf16 amx_tile amx_int8")


def test_cpu_flags_parse_the_flags_line(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\n"
                       f"flags\t\t: {INTEL_AMX_FLAGS}\n\nprocessor\t: 1\nflags\t\t: fpu\n")
    flags = diagnostics.cpu_flags(cpuinfo)
    assert flags is not None and "amx_int8" in flags and "avx2" in flags
    assert diagnostics.has_amx(flags)
    assert not diagnostics.has_amx(frozenset({"avx2", "avx512f"}))
    assert diagnostics.cpu_flags(tmp_path / "missing") is None
    (tmp_path / "noflags").write_text("processor\t: 0\n")
    assert diagnostics.cpu_flags(tmp_path / "noflags") is None


def test_build_features_and_what_the_cpu_lacks() -> None:
    info = ("CPU : SSE3 = 1 | SSSE3 = 1 | AVX = 1 | AVX2 = 1 | F16C = 1 | FMA = 1 | "
            "AVX512 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | ")
    features = diagnostics.build_features(info)
    assert features["AVX2"] and features["AMX_INT8"] and features["OPENMP"]
    old_cpu = frozenset({"pni", "ssse3", "avx", "fma", "f16c"})
    assert diagnostics.missing_cpu_features(features, old_cpu) == ["AVX2", "AVX512", "AMX_INT8"]
    amx_cpu = frozenset(INTEL_AMX_FLAGS.split())
    assert diagnostics.missing_cpu_features(features, amx_cpu) == []
    assert diagnostics.missing_cpu_features(features, None) == []


@pytest.mark.slow
def test_the_installed_build_is_portable() -> None:
    """The wheel scripts/build-llama-wheel makes uses no AVX-512 or AMX, and nothing this
    CPU lacks (the crash of llama.cpp issue 20824 needs AMX in the build)."""
    features = diagnostics.build_features(diagnostics.system_info())
    assert features.get("AVX2") is True
    assert not any(features.get(name) for name in ("AVX512", "AMX_INT8", "AVX512_VNNI"))
    assert diagnostics.missing_cpu_features(features, diagnostics.cpu_flags()) == []


def test_threads_never_oversubscribe_the_cores() -> None:
    assert engine.default_threads(1, cores=2) == 2
    assert engine.default_threads(2, cores=2) == 1
    assert engine.default_threads(4, cores=2) == 1
    assert engine.default_threads(2, cores=8) == 4
    assert engine.generation_threads(1, cores=2) == 1
    assert engine.generation_threads(2, cores=2) == 1
    assert engine.generation_threads(1, cores=8) == 4
    kwargs = engine.llama_load_kwargs("/m.gguf", n_ctx=256, n_batch=512, pool_size=2)
    assert kwargs["n_threads_batch"] == engine.default_threads(2)
    assert kwargs["n_threads"] == engine.generation_threads(2)
    # the contexts that may run at once never ask for more threads than there are cores
    for pool in (1, 2, 3, 4):
        load = engine.llama_load_kwargs("/m.gguf", n_ctx=256, pool_size=pool)
        assert pool * load["n_threads_batch"] <= max(pool, engine.available_cores())
    assert kwargs["n_batch"] == 256
    assert engine.llama_load_kwargs("/m.gguf", n_ctx=256, n_threads=3)["n_threads_batch"] == 3


def test_import_sets_a_passive_wait_policy_only_for_llama_cpp() -> None:
    """libgomp reads OMP_WAIT_POLICY once, when llama_cpp loads it: it sees PASSIVE, and the
    variable is gone again afterwards for everything else in the process."""
    code = ("import os\nfrom flowyard_llamacpp import engine\nengine.import_llama_cpp()\n"
            "print(os.environ.get('OMP_WAIT_POLICY'))\nprint(engine.omp_wait_policy_note)\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["OMP_DISPLAY_ENV"] = "TRUE"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in done.stderr
    assert done.stdout.splitlines()[0] == "None"
    assert "flowyard's default" in done.stdout
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, check=True)
    assert "OMP_WAIT_POLICY = 'ACTIVE'" in done.stderr
    assert done.stdout.splitlines()[0] == "ACTIVE"


async def test_a_crashing_child_is_reported_with_its_signal() -> None:
    crash = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"]
    check = await diagnostics.run_check_process(crash, timeout_s=30)
    assert not check.ok and "SIGSEGV" in check.detail


async def test_a_hanging_child_is_killed_at_the_time_limit() -> None:
    hang = [sys.executable, "-c", "import time; time.sleep(60)"]
    check = await diagnostics.run_check_process(hang, timeout_s=0.5)
    assert not check.ok and "within 0.5s" in check.detail


async def test_a_failing_child_reports_its_last_error_line() -> None:
    fail = [sys.executable, "-c", "raise SystemExit('cannot load the model')"]
    check = await diagnostics.run_check_process(fail, timeout_s=30)
    assert not check.ok and "status 1" in check.detail and "cannot load" in check.detail
    quiet = [sys.executable, "-c", "print(" + repr(json.dumps({"tokens": 0})) + ")"]
    check = await diagnostics.run_check_process(quiet, timeout_s=30)
    assert not check.ok and "no token" in check.detail


@pytest.mark.slow
async def test_generation_check_generates_real_tokens() -> None:
    path = smollm2_path()
    assert path is not None
    check = await diagnostics.run_generation_check(path, max_tokens=4, timeout_s=120)
    assert check.ok, check.detail
    assert check.tokens == 4 and check.seconds > 0 and check.text.strip()
    assert "AVX2 = 1" in check.system_info


@pytest.mark.slow
async def test_diagnose_reports_build_threads_and_generation() -> None:
    provider = LlamaCppProvider()
    assert isinstance(provider, SupportsDiagnostics)
    findings = await provider.diagnose(timeout_s=120)
    by_name = {f.name: f for f in findings}
    assert list(by_name) == ["build", "threads", "generation"]
    assert by_name["build"].status == "ok" and "AVX2" in by_name["build"].detail
    threads = by_name["threads"].detail
    assert "up to 2 context(s); alone a context gets" in threads  # the built-in pool of two
    assert "prompt thread(s)" in threads and "core(s)" in threads
    assert by_name["generation"].status == "ok", by_name["generation"].detail
    assert "generated 8 token(s)" in by_name["generation"].detail


@pytest.mark.slow
async def test_diagnose_fails_on_a_file_llama_cpp_cannot_load(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4096))
    provider = LlamaCppProvider({"bad": ModelSpec(alias="bad", path=bad)}, default_alias="bad")
    findings = await provider.diagnose(timeout_s=120)
    generation = [f for f in findings if f.name == "generation"][0]
    assert generation.status == "fail" and "status" in generation.detail


async def test_diagnose_without_the_model_file_is_a_warning(tmp_path: Path) -> None:
    provider = LlamaCppProvider({"gone": ModelSpec(alias="gone", path=tmp_path / "x.gguf")},
                                default_alias="gone")
    findings = await provider.diagnose(timeout_s=5)
    assert findings[-1] == Diagnostic("generation", "warn", findings[-1].detail)
    assert "does not exist" in findings[-1].detail


@pytest.mark.slow
def test_doctor_shows_the_generation_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                           ) -> None:
    from flowyard.cli import cli

    monkeypatch.setenv("FLOWYARD_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["doctor", "--json", "--timeout", "2"])
    report = json.loads(result.output)
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["local generation"]["status"] == "ok", checks["local generation"]
    assert "AVX2" in checks["local build"]["detail"]
    assert checks["local threads"]["status"] == "ok"
