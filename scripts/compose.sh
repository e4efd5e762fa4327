#!/usr/bin/env bash
# `make compose-up` / `make compose-down`: deploy/compose.yml with podman-compose.
#   scripts/compose.sh up      start the stack (Grafana too unless COMPOSE_PROFILES says otherwise)
#   scripts/compose.sh down    stop and remove the containers (volumes stay; VOLUMES=1 removes them)
#   scripts/compose.sh ARGS    any other podman-compose command, e.g. `ps`, `logs receiver`,
#                              `run --rm cli dlq list` (operator commands on the compose network)
# Secrets come from deploy/.env, written with random values the first time.
set -euo pipefail
source "$(dirname "$0")/podman-env.sh"
cd "$CONVEYOR_ROOT"
ENV_FILE=deploy/.env

if [ ! -f "$ENV_FILE" ]; then
  rand() { .venv/bin/python -c 'import secrets; print(secrets.token_urlsafe(24))'; }
  umask 077
  cat >"$ENV_FILE" <<EOT
# Secrets for deploy/compose.yml, made by scripts/compose.sh. Not committed (.gitignore).
LOVABLE_WEBHOOK_SECRET=$(rand)
LOVABLE_API_KEY=$(rand)
ADMIN_API_KEY=$(rand)
CALLBACK_SIGNING_SECRETS=whsec_$(.venv/bin/python -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')
GRAFANA_ADMIN_PASSWORD=$(rand)
EOT
  echo "wrote $ENV_FILE with new random secrets"
fi
# Added later than the others: an older deploy/.env gets it appended.
if ! grep -q '^CONVEYOR_SECRET_KEYS=' "$ENV_FILE"; then
  echo "CONVEYOR_SECRET_KEYS=k1:$(.venv/bin/python -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')" >>"$ENV_FILE"
fi
set -a
source "$ENV_FILE"
set +a

compose() { "$PODMAN_COMPOSE" -f "$COMPOSE_FILE" "$@"; }

case "${1:-}" in
  up)
    shift
    # Grafana's image must be pullable; where it is not, COMPOSE_PROFILES= leaves it out.
    export COMPOSE_PROFILES="${COMPOSE_PROFILES-grafana}"
    compose up -d "$@"
    echo "receiver (via edge): http://127.0.0.1:${CONVEYOR_HTTP_PORT:-3100}"
    if [[ ",$COMPOSE_PROFILES," == *",grafana,"* ]]; then
      echo "grafana: http://127.0.0.1:${GRAFANA_PORT:-3000} (admin / GRAFANA_ADMIN_PASSWORD in $ENV_FILE)"
    fi
    ;;
  down)
    shift
    export COMPOSE_PROFILES="grafana,smoke,tools"
    if [ "${VOLUMES:-0}" = 1 ]; then compose down -v "$@"; else compose down "$@"; fi
    ;;
  *)
    # `run --rm cli ...` needs the tools profile; Grafana stays in view for ps and logs.
    export COMPOSE_PROFILES="${COMPOSE_PROFILES-grafana,tools}"
    compose "$@"
    ;;
esac
