#!/usr/bin/env bash
# Build the CPU images of this project from Debian packages and PyPI wheels only:
#   resnet18-triton/server:VERSION            docker/Dockerfile (`resnet18-triton serve`)
#   resnet18-triton/proxy:VERSION             docker/proxy.Dockerfile (Debian's nginx)
#   resnet18-triton/model-repository:VERSION  docker/model-repository.Dockerfile (--repository DIR)
#
# The project's wheel and every wheel it needs are downloaded here, on the host, so that the host's
# pip configuration (index, proxy, CA bundle) applies and the image build needs no network for pip.
# The base image is debian:bookworm-slim; where it cannot be pulled (no registry), an equivalent
# minimal Debian 12 is made with debootstrap (as root) and tagged with that name, and this says so.
#
# Usage: bash scripts/build-image.sh [--repository DIR [--repository-only]] [--tag TAG] [--no-proxy]
# --repository-only builds the model-repository image alone (the others built before, same tag).
# Environment: DOCKER (client, default docker), PYTHON (for pip, default .venv/bin/python or
# python3), BASE_IMAGE, DEBIAN_MIRROR (for debootstrap), BUILD_NETWORK (default host: apt inside
# the build uses the host's network, which works without a bridge).
set -euo pipefail
cd "$(dirname "$0")/.."

DOCKER="${DOCKER:-docker}"
BASE_IMAGE="${BASE_IMAGE:-debian:bookworm-slim}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
BUILD_NETWORK="${BUILD_NETWORK:-host}"
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  [ -x .venv/bin/python ] && PYTHON=.venv/bin/python
fi
VERSION="$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')"
TAG="$VERSION"
REPOSITORY=""
PROXY=1
ONLY_REPOSITORY=0

while (($#)); do
  case "$1" in
    --repository) REPOSITORY="${2:?--repository needs a directory}"; shift 2 ;;
    --tag) TAG="${2:?--tag needs a value}"; shift 2 ;;
    --no-proxy) PROXY=0; shift ;;
    --repository-only) ONLY_REPOSITORY=1; shift ;;
    -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "build-image: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ -n "$REPOSITORY" ] && [ ! -f "$REPOSITORY/preprocess/config.pbtxt" ]; then
  echo "build-image: $REPOSITORY is not an exported model repository;" \
    "run \`resnet18-triton export\` first" >&2
  exit 2
fi
if ! "$DOCKER" info >/dev/null 2>&1; then
  echo "build-image: no Docker engine answers (\`$DOCKER info\` failed); start one, or set" \
    "DOCKER_HOST to its socket" >&2
  exit 2
fi

say() { echo "build-image: $*" >&2; }
quietly() {  # run a step with its output in a log, shown only when it fails
  "$@" >"$work/step.log" 2>&1 || { tail -40 "$work/step.log" >&2; say "failed: $*"; exit 1; }
}
work="$(mktemp -d -t resnet18-triton-image.XXXXXX)"
trap 'rm -rf "$work"' EXIT

# A minimal Debian 12 like debian:bookworm-slim: minbase, no docs, man pages or locales (dpkg
# excludes them from later installs too), no apt lists or package cache.
make_base_with_debootstrap() {
  if [ "$(id -u)" -ne 0 ] || ! command -v debootstrap >/dev/null; then
    say "cannot pull $BASE_IMAGE, and making it needs root and debootstrap" \
      "(apt-get install debootstrap), or pull it where a registry is reachable"
    exit 2
  fi
  say "cannot pull $BASE_IMAGE: making an equivalent Debian 12 minbase with debootstrap" \
    "from $DEBIAN_MIRROR, tagged $BASE_IMAGE (local only)"
  local rootfs="$work/rootfs"
  debootstrap --variant=minbase bookworm "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 ||
    { tail -20 "$work/debootstrap.log" >&2; say "debootstrap failed"; exit 1; }
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'SLIM'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
SLIM
  find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/* "$rootfs"/var/lib/apt/lists/* \
    "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/log/*.log
  # apt settings of the official image: no package lists or caches kept in a layer.
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CLEAN'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CLEAN
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'Acquire::GzipIndexes "true";' >"$rootfs/etc/apt/apt.conf.d/docker-gzip-indexes"
  echo 'APT::AutoRemove::SuggestsImportant "false";' \
    >"$rootfs/etc/apt/apt.conf.d/docker-autoremove-suggests"
  # The same sources as the official image: the release, its updates and security.
  rm -f "$rootfs/etc/apt/sources.list"
  cat >"$rootfs/etc/apt/sources.list.d/debian.sources" <<SOURCES
Types: deb
URIs: $DEBIAN_MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_MIRROR%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
  tar -C "$rootfs" -c . | "$DOCKER" import \
    --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    - "$BASE_IMAGE" >/dev/null
  rm -rf "$rootfs"
}

build() {  # build IMAGE DOCKERFILE CONTEXT
  say "docker build $1"
  quietly "$DOCKER" build --network "$BUILD_NETWORK" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --build-arg "VERSION=$VERSION" -t "$1" -f "$2" "$3"
}

if ((ONLY_REPOSITORY)); then
  [ -n "$REPOSITORY" ] || { echo "build-image: --repository-only needs --repository DIR" >&2; exit 2; }
  build "resnet18-triton/model-repository:$TAG" docker/model-repository.Dockerfile "$REPOSITORY"
  exit 0
fi

if "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  say "base image $BASE_IMAGE is here"
elif "$DOCKER" pull -q "$BASE_IMAGE" >/dev/null 2>"$work/pull.log"; then
  say "pulled $BASE_IMAGE"
else
  make_base_with_debootstrap
fi

# The context: wheels/ (the project's wheel and everything it needs, for CPython 3.11 on x86_64
# glibc, which is what Debian 12 runs).
context="$work/context"
mkdir -p "$context/wheels"
say "building the project's wheel"
# From a copy of what the wheel is made of: setuptools reuses ./build, where a module deleted
# from src/ would live on in every later wheel.
mkdir -p "$work/project"
cp -r pyproject.toml README.md src "$work/project/"
find "$work/project" -name __pycache__ -prune -exec rm -rf {} + -o -name '*.egg-info' -prune -exec rm -rf {} +
quietly "$PYTHON" -m pip wheel --no-deps -w "$context/wheels" "$work/project"
wheel="$(ls "$context"/wheels/resnet18_triton-"$VERSION"-*.whl)"
say "downloading the wheels of resnet18-triton[server] (host pip configuration)"
# pip does not widen a --platform to older glibc tags by itself: name every one Debian 12's glibc
# 2.36 runs, so that this works the same from any host.
platforms=(--platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for minor in $(seq 5 36); do platforms+=(--platform "manylinux_2_${minor}_x86_64"); done
quietly "$PYTHON" -m pip download -d "$context/wheels" --only-binary=:all: \
  --python-version 3.11 --implementation cp --abi cp311 "${platforms[@]}" "${wheel}[server]"

build "resnet18-triton/server:$TAG" docker/Dockerfile "$context"
if ((PROXY)); then
  mkdir -p "$work/proxy"
  build "resnet18-triton/proxy:$TAG" docker/proxy.Dockerfile "$work/proxy"
fi
if [ -n "$REPOSITORY" ]; then
  build "resnet18-triton/model-repository:$TAG" docker/model-repository.Dockerfile "$REPOSITORY"
fi
# The build stage (wheels, pip, ensurepip) is no part of a tagged image: drop it, and only it.
"$DOCKER" image prune -f --filter label=resnet18-triton.stage=build >/dev/null

"$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}  {{.Size}}' | grep "^resnet18-triton/.*:$TAG " >&2
