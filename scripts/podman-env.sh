# Sourced by scripts/images.sh and scripts/smoke.sh: the Podman setup of deploy/podman/ and the
# Debian packages the container targets need. Hosts without Docker run Dockerfiles and compose
# files with Podman; see docs/operations.md.

CONVEYOR_ROOT="${CONVEYOR_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
# runc as the runtime and no default ulimits: both are needed where podman runs sandboxed.
export CONTAINERS_CONF="${CONTAINERS_CONF:-$CONVEYOR_ROOT/deploy/podman/containers.conf}"
export IMAGE_PREFIX="${IMAGE_PREFIX:-localhost/conveyor}"
export IMAGE_TAG="${IMAGE_TAG:-latest}"
# Third-party images of deploy/compose.yml: the ones `make images` builds from Debian's
# packages unless set (the compose file itself defaults to the upstream images).
export PROMETHEUS_IMAGE="${PROMETHEUS_IMAGE:-$IMAGE_PREFIX/prometheus:$IMAGE_TAG}"
export NODE_EXPORTER_IMAGE="${NODE_EXPORTER_IMAGE:-$IMAGE_PREFIX/node-exporter:$IMAGE_TAG}"
export HAPROXY_IMAGE="${HAPROXY_IMAGE:-$IMAGE_PREFIX/haproxy:$IMAGE_TAG}"
COMPOSE_FILE="$CONVEYOR_ROOT/deploy/compose.yml"
PODMAN_COMPOSE="$CONVEYOR_ROOT/.venv/bin/podman-compose"

# Installs the Debian packages behind the given commands, only those missing (root or sudo).
ensure_commands() {
  local -A pkg_of=(
    [podman]=podman [runc]=runc [debootstrap]=debootstrap [iptables]=iptables
    [aardvark-dns]=aardvark-dns [prometheus]=prometheus
    [prometheus-node-exporter]=prometheus-node-exporter
  )
  local missing=() cmd
  for cmd in "$@"; do
    if ! command -v "$cmd" >/dev/null 2>&1 && ! [ -x "/usr/lib/podman/$cmd" ]; then
      missing+=("${pkg_of[$cmd]:-$cmd}")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # netavark (podman's network stack) needs iptables; slirp4netns/uidmap for rootless use.
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" netavark iptables >/dev/null
  # Debian's prometheus packages start their daemons on install; the stack runs its own.
  if command -v systemctl >/dev/null 2>&1; then
    $sudo systemctl stop prometheus prometheus-node-exporter >/dev/null 2>&1 || true
  fi
}
