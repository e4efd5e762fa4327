#!/usr/bin/env bash
# `make smoke`: the container smoke test. Builds the images, starts deploy/compose.yml as its
# own compose project (conveyor-smoke: its own containers, network and volumes) with a
# callback sink on the compose network, sends one signed Lovable webhook to the published
# edge port, waits for the signed callback at the sink, checks the cluster (3 NATS nodes, R3
# streams), the images' health checks and Prometheus' targets, then removes everything it
# started. Bounded: SMOKE_TIMEOUT_S (default 240) for the stack to come up and deliver.
#
# SKIP_IMAGES=1 reuses the images of an earlier `make images`; KEEP=1 leaves the stack up.
set -euo pipefail
source "$(dirname "$0")/podman-env.sh"
cd "$CONVEYOR_ROOT"

PROJECT=conveyor-smoke
TIMEOUT_S="${SMOKE_TIMEOUT_S:-240}"
ARTIFACTS=test-artifacts/smoke
PY=.venv/bin/python
started=$(date +%s)

log() { printf '\033[1m== [%3ss] %s\033[0m\n' "$(($(date +%s) - started))" "$*"; }
fail() { printf '\033[31mSMOKE FAILED: %s\033[0m\n' "$*" >&2; exit 1; }
compose() { "$PODMAN_COMPOSE" -p "$PROJECT" -f "$COMPOSE_FILE" "$@"; }
deadline=0
time_left() { [ "$(date +%s)" -lt "$deadline" ]; }

if [ "${SKIP_IMAGES:-0}" != 1 ]; then
  bash scripts/images.sh
else
  ensure_commands podman runc iptables aardvark-dns
fi
ensure_commands curl

# Fresh secrets for this run only; the sink checks callbacks with the same signing secret.
rand() { "$PY" -c 'import secrets; print(secrets.token_urlsafe(24))'; }
export LOVABLE_WEBHOOK_SECRET LOVABLE_API_KEY ADMIN_API_KEY GRAFANA_ADMIN_PASSWORD CALLBACK_SIGNING_SECRETS
LOVABLE_WEBHOOK_SECRET=$(rand)
LOVABLE_API_KEY=$(rand)
ADMIN_API_KEY=$(rand)
GRAFANA_ADMIN_PASSWORD=$(rand)
CALLBACK_SIGNING_SECRETS=whsec_$("$PY" -c 'import base64, secrets; print(base64.b64encode(secrets.token_bytes(32)).decode())')
export LOVABLE_CALLBACK_URL=http://callback-sink:8090/lovable
# The sink lives on the compose network, a private range the deliverer refuses by default.
export CALLBACK_ALLOWED_NETWORKS=10.0.0.0/8,172.16.0.0/12,192.168.0.0/16
export COMPOSE_PROFILES=smoke
CONVEYOR_HTTP_PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export CONVEYOR_HTTP_PORT
EDGE="http://127.0.0.1:$CONVEYOR_HTTP_PORT"

cleanup() {
  local rc=$?
  if [ $rc -ne 0 ] || [ "${KEEP:-0}" != 1 ]; then
    if [ $rc -ne 0 ]; then
      mkdir -p "$ARTIFACTS"
      for c in $(podman ps -a --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
        podman logs "$c" >"$ARTIFACTS/$c.log" 2>&1 || true
      done
      echo "container logs: $ARTIFACTS/" >&2
    fi
    log "removing the $PROJECT stack"
    compose down -v -t 10 >/dev/null 2>&1 || true
  else
    echo "KEEP=1: stack $PROJECT left running; remove with: $PODMAN_COMPOSE -p $PROJECT -f $COMPOSE_FILE down -v"
  fi
  exit $rc
}
trap cleanup EXIT

log "starting $PROJECT (edge on $EDGE)"
# A stack left over by an interrupted run of this script goes first.
compose down -v -t 5 >/dev/null 2>&1 || true
mkdir -p "$ARTIFACTS"
compose up -d >"$ARTIFACTS/up.log" 2>&1 || { cat "$ARTIFACTS/up.log" >&2; fail "compose up"; }

deadline=$(($(date +%s) + TIMEOUT_S))

container() { podman ps --filter "label=io.podman.compose.project=$PROJECT" \
  --filter "label=io.podman.compose.service=$1" --format '{{.Names}}' | head -1; }

log "waiting for the receivers behind the edge"
until curl -fsS -o /dev/null "$EDGE/health/ready" 2>/dev/null; do
  time_left || fail "edge $EDGE/health/ready not 200 after ${TIMEOUT_S}s"
  sleep 1
done

log "sending a signed Lovable webhook"
job_id=$("$PY" - "$EDGE" <<'EOF'
import json, os, sys, time, uuid
import httpx
from conveyor.shared.domain.signing import lovable_sign

edge = sys.argv[1]
body = json.dumps({
    "id": f"evt_{uuid.uuid4().hex}",
    "type": "agent.task_requested",
    "project_id": "smoke-project",
    "data": {"agent": "architect", "prompt": "Summarise the structure",
             "files": {"app/main.py": "def main():\n    return 1\n"}},
    "created_at": "2026-01-01T00:00:00Z",
}).encode()
ts = int(time.time())
headers = {
    "Content-Type": "application/json",
    "X-Lovable-Timestamp": str(ts),
    "X-Lovable-Signature": lovable_sign(os.environ["LOVABLE_WEBHOOK_SECRET"], ts, body),
    "X-Lovable-Project-Id": "smoke-project",
}
r = httpx.post(f"{edge}/api/webhooks/lovable", content=body, headers=headers, timeout=10)
if r.status_code != 202:
    sys.exit(f"webhook answered {r.status_code}: {r.text}")
print(r.json()["job_id"])
EOF
) || fail "webhook not accepted"
log "accepted: job $job_id"

log "waiting for the callback at the sink"
sink=$(container callback-sink)
while :; do
  line=$(podman logs "$sink" 2>/dev/null | grep -F "\"jobId\": \"$job_id\"" | head -1 || true)
  [ -n "$line" ] && break
  time_left || fail "no callback for $job_id at the sink after ${TIMEOUT_S}s"
  sleep 1
done
"$PY" - "$line" "$job_id" <<'EOF' || fail "callback body"
import json, sys
line, job_id = json.loads(sys.argv[1]), sys.argv[2]
cb = line["callback"]
assert line["verified"], f"callback signature not valid: {line['reason']}"
assert line["path"] == "/lovable", line["path"]
assert cb["jobId"] == job_id and cb["status"] == "completed", cb
assert cb["lovableProjectId"] == "smoke-project" and cb["agentId"] == "architect", cb
print(f"callback: job {cb['jobId']} agent {cb['agentId']} status {cb['status']}, signature valid")
EOF

log "job record through the edge"
status=$(curl -fsS -H "Authorization: Bearer $LOVABLE_API_KEY" "$EDGE/api/jobs/$job_id" | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["status"])')
[ "$status" = completed ] || fail "GET /api/jobs/$job_id says $status"

log "cluster: three NATS nodes, streams at three replicas"
podman exec -i "$(container receiver)" python3 - <<'EOF' || fail "JetStream cluster"
import asyncio, os
import nats

async def main() -> None:
    nc = await nats.connect(os.environ["NATS_URL"].split(","))
    js = nc.jetstream()
    for name in ("EVENTS", "JOBS", "RESULTS"):
        info = await js.stream_info(name)
        peers = 1 + len(info.cluster.replicas or [])
        assert info.config.num_replicas == 3 and peers == 3, (name, info.config.num_replicas, peers)
    print("EVENTS, JOBS, RESULTS: 3 replicas each, leader", info.cluster.leader)
    await nc.close()

asyncio.run(main())
EOF

log "operator CLI on the compose network"
COMPOSE_PROFILES=smoke,tools compose run --rm -T cli dlq list >"$ARTIFACTS/cli.log" 2>&1 || { cat "$ARTIFACTS/cli.log" >&2; fail "conveyor dlq list"; }
grep -v "level=" "$ARTIFACTS/cli.log" | sed 's/^/  /' | tail -3

log "image health checks"
for c in $(podman ps --filter "label=io.podman.compose.project=$PROJECT" --format '{{.Names}}'); do
  case "$c" in *receiver* | *executor* | *deliverer* | *deployer* | *nats*)
    podman healthcheck run "$c" >/dev/null 2>&1 || fail "health check of $c"
    echo "  $c healthy" ;;
  esac
done

log "prometheus scrapes every service replica"
prom=$(container prometheus)
until podman exec -i "$prom" python3 - <<'EOF' 2>/dev/null
import json, sys, urllib.parse, urllib.request
url = "http://127.0.0.1:9090/api/v1/query?query=" + urllib.parse.quote('count by (job) (up == 1)')
rows = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
up = {r["metric"]["job"]: int(r["value"][1]) for r in rows}
want = {"receiver": 2, "executor": 2, "deliverer": 1, "deployer": 1, "node": 1}
if any(up.get(k, 0) < v for k, v in want.items()):
    sys.exit(1)
print("  targets up:", ", ".join(f"{k} {v}" for k, v in sorted(up.items())))
EOF
do
  time_left || fail "prometheus does not see every target up"
  sleep 2
done

log "smoke passed in $(($(date +%s) - started))s"
