#!/usr/bin/env bash
# Installs the Debian packages the tests use, only those missing. Idempotent; needs root
# (or sudo). Commands checked -> package that provides them.
set -euo pipefail

declare -A WANT=(
  [git]=git
  [promtool]=prometheus
  [chromium]=chromium
  [openssl]=openssl
  [curl]=curl
)

missing=()
for cmd in "${!WANT[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${WANT[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian's prometheus package may start its own server on :9090 when installed; the tests
# start their own on free ports, so stop the packaged service (only when we just installed it).
if [[ " ${missing[*]} " == *" prometheus "* ]]; then
  $SUDO systemctl stop prometheus >/dev/null 2>&1 || $SUDO service prometheus stop >/dev/null 2>&1 || true
fi
