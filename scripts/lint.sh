#!/usr/bin/env bash
# Static checks: ruff format --check, ruff check and mypy (configured in pyproject.toml), with the
# tools of the venv scripts/setup.sh installs (the `lint` extra is part of `dev`). Every check runs
# even when an earlier one fails, so one run shows everything; the exit code is 1 if any failed.
# VENV=/path/to/venv picks another environment (default: .venv).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
for tool in ruff mypy; do
  if [ ! -x "$VENV/bin/$tool" ]; then
    echo "lint: $VENV/bin/$tool not found; run 'bash scripts/setup.sh' first (or set VENV)" >&2
    exit 2
  fi
done

failed=()
run() {
  local name="$1"
  shift
  echo "lint: $name"
  "$@" || failed+=("$name")
}
run "ruff format --check" "$VENV/bin/ruff" format --check src tests benchmarks
run "ruff check" "$VENV/bin/ruff" check src tests benchmarks
run "mypy" "$VENV/bin/mypy"

if ((${#failed[@]})); then
  echo "lint: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "lint: all checks passed"
