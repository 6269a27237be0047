#!/usr/bin/env bash
# Set up a fresh Debian/Ubuntu x86_64 machine: system libraries, a virtual environment in .venv,
# and the project with every extra. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

# libpython3.11: the Triton Python-backend stub embeds it. libb64-0d: perf_analyzer needs it.
# docker.io, docker-compose, debootstrap: the container tests start a Docker engine, build the
# images (a Debian base made with debootstrap where no registry answers) and run docker-compose.yml.
# chromium, chromium-driver: the web page's browser test drives the real browser (Playwright).
# nginx: the reverse proxy in front of replicas (`resnet18-triton cluster`, tests/integration);
# libnginx-mod-http-js: its njs module, which checks API keys against their SHA-256 hashes.
# libtcmalloc-minimal4: the malloc `serve` preloads for tritonserver (Triton's advice; it keeps
# less of the memory large request bodies leave behind than glibc does).
APT_PACKAGES=(libpython3.11 libb64-0d libtcmalloc-minimal4 docker.io docker-compose debootstrap chromium chromium-driver nginx libnginx-mod-http-js libnginx-mod-http-lua)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]} (apt)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The Triton stub is built for the system's Python 3.11; the venv must be the same minor version.
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  # torch 2.14.1 for x86_64 is a CUDA build: the venv takes about 7 GB, the tests about 1 GB more.
  free_gb=$(($(df -Pk . | awk 'NR == 2 {print $4}') / 1024 / 1024))
  if ((free_gb < 9)); then
    echo "setup: warning: only ${free_gb} GB free here; the venv needs about 7 GB and the" \
      "tests about 1 GB more (free space with \`df -h .\`)" >&2
  fi
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
fi
# torch and torchvision are pinned in pyproject.toml (export extra): pip takes them from local
# disk where they lie there, otherwise from PyPI.
echo "setup: installing resnet18-triton[dev] into .venv (the first run takes a few minutes)"
log="$(mktemp -t resnet18-triton-pip.XXXXXX.log)"
if ! .venv/bin/python -m pip install -e ".[dev]" >"$log" 2>&1; then
  tail -40 "$log" >&2
  echo "setup: pip install failed (full log: $log)" >&2
  exit 1
fi
rm -f "$log"
