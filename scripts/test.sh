#!/usr/bin/env bash
# Set up (as scripts/setup.sh) and run every test: unit tests and integration tests against a
# real Triton server that the test session starts on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
