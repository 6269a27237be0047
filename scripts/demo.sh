#!/usr/bin/env bash
# The whole job on a fresh machine: set up, export ResNet-18 to ONNX (verified against PyTorch),
# fill the model repository, start the real Triton server, classify the sample photos, stop.
#   WEIGHTS=imagenet|random|PATH (default imagenet; falls back to random when offline)
#   HTTP_PORT (default 8000)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
CLI=.venv/bin/resnet18-triton
WEIGHTS="${WEIGHTS:-imagenet}"
HTTP_PORT="${HTTP_PORT:-8000}"

if ! "$CLI" export --weights "$WEIGHTS"; then
  if [ "$WEIGHTS" != imagenet ]; then exit 1; fi
  echo "demo: ImageNet weights unavailable (offline?) - falling back to --weights random" >&2
  "$CLI" export --weights random
fi

log="$(mktemp -t resnet18-triton-serve.XXXXXX.log)"
"$CLI" serve --http-port "$HTTP_PORT" --grpc-port $((HTTP_PORT + 1)) \
  --metrics-port $((HTTP_PORT + 2)) --quiet 2>"$log" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT

url="127.0.0.1:$HTTP_PORT"
for _ in $(seq 1 180); do
  if "$CLI" health --url "$url" >/dev/null 2>&1; then break; fi
  if ! kill -0 $server 2>/dev/null; then cat "$log" >&2; exit 1; fi
  sleep 1
done
"$CLI" health --url "$url"
echo
"$CLI" classify --url "$url" --top-k 5 tests/data/samples
