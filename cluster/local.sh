#!/usr/bin/env bash
# Local single-node "cluster" for bertclf: a Ray head bound to 127.0.0.1 plus a
# local S3 (moto) server, so jobs/*.py can be submitted exactly as on a real
# cluster (`ray job submit ...`) and read/write s3:// URIs.
#
# Usage:  cluster/local.sh up|down|status
#
#   up      start Ray head (+ moto S3 unless BERTCLF_S3=0), wait until jobs can be
#           submitted, print the env to use on stdout:  eval "$(cluster/local.sh up)"
#   down    stop ONLY what `up` started (moto by its saved pid, the Ray processes
#           whose command line carries our --temp-dir); never a bare `ray stop`
#   status  say whether each part is up (exit 0 when everything recorded is up)
#
# Activate the venv first (`. .venv/bin/activate`): the script uses whatever
# `ray`, `moto_server` and `python` are on PATH.
#
# Knobs (environment):
#   RAY_PORT             GCS port of the head                 (default 6380)
#   RAY_DASHBOARD_PORT   dashboard / jobs API port            (default 8265)
#   RAY_NUM_CPUS         CPUs advertised to Ray               (default: nproc)
#   RAY_NUM_GPUS         GPUs advertised to Ray               (default: Ray autodetects)
#   BERTCLF_RAY_TMPDIR   Ray --temp-dir of this cluster       (default /tmp/ray-bertclf)
#                        (deliberately not Ray's own RAY_TMPDIR, which means the
#                        *parent* of Ray's temp dir and is read by every ray.init())
#   RAY_DASHBOARD_AGENT_PORT / RAY_CLIENT_PORT
#                        dashboard-agent HTTP port / Ray client port (defaults
#                        52365 / 10001, or a free port when another Ray holds them)
#   RAY_START_EXTRA_ARGS extra words appended to `ray start` (word-split)
#   RAY_WAIT_S           seconds to wait for the jobs API     (default 90)
#   BERTCLF_S3           0 = do not start the local S3 server (default 1)
#   S3_PORT              moto port                            (default 5555)
#   BERTCLF_STATE_DIR    where pids/logs/state are kept       (default .bertclf-local,
#                        relative paths are taken from the repo root)
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd -- "${SCRIPT_DIR}/.." && pwd)"

HOST=127.0.0.1
RAY_PORT="${RAY_PORT:-6380}"
RAY_DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
RAY_NUM_CPUS="${RAY_NUM_CPUS:-$(nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1)}"
RAY_WAIT_S="${RAY_WAIT_S:-90}"
BERTCLF_S3="${BERTCLF_S3:-1}"
S3_PORT="${S3_PORT:-5555}"
STOP_GRACE_S="${STOP_GRACE_S:-10}"
PYTHON="$(command -v python || command -v python3 || echo python3)"

abspath() {  # abspath PATH BASE -> absolute path (no symlink resolution needed)
  case "$1" in
    /*) printf '%s\n' "$1" ;;
    *) printf '%s\n' "$2/$1" ;;
  esac
}

STATE_DIR="$(abspath "${BERTCLF_STATE_DIR:-.bertclf-local}" "${REPO_ROOT}")"
STATE_FILE="${STATE_DIR}/state.env"
RAY_TEMP_DIR_DEFAULT="$(abspath "${BERTCLF_RAY_TMPDIR:-/tmp/ray-bertclf}" "${PWD}")"
RAY_TEMP_DIR_DEFAULT="${RAY_TEMP_DIR_DEFAULT%/}"

log() { printf '[local.sh] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  cat >&2 <<EOF
usage: cluster/local.sh up|down|status

  up      start a single-node Ray head on ${HOST} (+ a moto S3 server unless
          BERTCLF_S3=0) and print the env to export (eval "\$(cluster/local.sh up)")
  down    stop only what 'up' started and remove ${STATE_DIR}
  status  print whether each part is up

see the header of cluster/local.sh for the environment knobs
EOF
}

# ---------------------------------------------------------------- helpers ----

port_open() {  # port_open PORT -> 0 if something accepts TCP on HOST:PORT
  (exec 3<>"/dev/tcp/${HOST}/$1") 2>/dev/null
}

http_ok() {  # http_ok URL -> 0 on a 2xx answer
  if command -v curl >/dev/null 2>&1; then
    curl -fsS -o /dev/null --max-time 5 "$1" 2>/dev/null
  else
    "$PYTHON" - "$1" >/dev/null 2>&1 <<'PY'
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=5).read()
PY
  fi
}

free_port() {  # an unused TCP port on HOST, chosen by the kernel
  "$PYTHON" - "$HOST" <<'PY'
import socket, sys
s = socket.socket()
s.bind((sys.argv[1], 0))
print(s.getsockname()[1])
s.close()
PY
}

pid_alive() {  # pid_alive PID -> 0 if running; a zombie (exited, not yet reaped) counts as gone
  [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null || return 1
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != "Z" ]]
}

pid_cmd_has() {  # pid_cmd_has PID WORD -> 0 if the pid's command line contains WORD
  [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$2"
}

# PIDs of the Ray processes of the cluster started with temp dir $1: every process
# with an argument equal to <dir>, ending in "=<dir>" (--temp-dir=, --temp_dir=) or
# pointing into <dir>/session_* (--session-dir=, --log-dir=, ...), plus all their
# descendants (workers rename themselves to "ray::..." and lose those arguments).
# The match is exact on the directory so /tmp/ray-bertclf never matches /tmp/ray
# or /tmp/ray-bertclf2 or <dir>/ray (a default Ray living under our dir).
ray_pids_for() {
  local dir="$1" p self="$$"
  local -a roots=()
  for p in /proc/[0-9]*; do
    p="${p#/proc/}"
    [[ "$p" == "$self" || "$p" == "${BASHPID:-$self}" ]] && continue
    [[ -r "/proc/$p/cmdline" ]] || continue
    if tr '\0' '\n' <"/proc/$p/cmdline" 2>/dev/null | D="$dir" awk '
        BEGIN { d = ENVIRON["D"]; n = length(d); found = 0 }
        {
          a = $0
          if (a == d) found = 1
          i = index(a, "=")
          if (i > 0 && substr(a, i + 1) == d) found = 1
          v = (i > 0) ? substr(a, i + 1) : a
          if (substr(v, 1, n + 9) == d "/session_") found = 1
        }
        END { exit(found ? 0 : 1) }'; then
      roots+=("$p")
    fi
  done
  ((${#roots[@]})) || return 0
  # add descendants, from one `ps` snapshot of pid/ppid pairs
  ps -e -o pid=,ppid= | R="${roots[*]}" awk '
    BEGIN { n = split(ENVIRON["R"], r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1 }
    { parent[$1] = $2 }
    END {
      do {
        changed = 0
        for (p in parent) if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 }
      } while (changed)
      for (p in keep) print p
    }' | sort -n
}

terminate_pids() {  # terminate_pids PID... : SIGTERM, wait STOP_GRACE_S, SIGKILL
  local -a pids=("$@") left=()
  local p i
  ((${#pids[@]})) || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for ((i = 0; i < STOP_GRACE_S * 4; i++)); do
    left=()
    for p in "${pids[@]}"; do pid_alive "$p" && left+=("$p"); done
    ((${#left[@]})) || return 0
    sleep 0.25
  done
  for p in "${left[@]}"; do
    log "pid $p still alive after ${STOP_GRACE_S}s: $(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | cut -c1-100)"
  done
  log "sending SIGKILL to: ${left[*]}"
  kill -KILL "${left[@]}" 2>/dev/null || true
}

load_state() {
  RAY_TEMP_DIR="" MOTO_PID="" S3_PORT_STATE="" RAY_DASHBOARD_PORT_STATE="" RAY_PORT_STATE=""
  if [[ -f "$STATE_FILE" ]]; then
    # shellcheck disable=SC1090
    . "$STATE_FILE"
  fi
}

env_line() {  # the exports a user needs to talk to this cluster
  local dash_port="$1" s3="$2" s3_port="$3"
  local line="export RAY_ADDRESS=http://${HOST}:${dash_port} RAY_AUTH_MODE=disabled"
  if [[ "$s3" != "0" ]]; then
    line+=" AWS_ENDPOINT_URL=http://${HOST}:${s3_port} AWS_ACCESS_KEY_ID=testing"
    line+=" AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1"
  fi
  printf '%s\n' "$line"
}

# --------------------------------------------------------------- commands ----

up_cleanup() {  # EXIT trap while `up` is starting things: undo them on failure
  local rc=$?
  if ((rc)); then
    log "up failed (rc=$rc), stopping what was started"
    cmd_down >&2 || true
  fi
  return "$rc"
}

cmd_up() {
  command -v ray >/dev/null 2>&1 || die "'ray' not on PATH (activate the venv: . .venv/bin/activate)"
  if [[ "$BERTCLF_S3" != "0" ]]; then
    command -v moto_server >/dev/null 2>&1 \
      || die "'moto_server' not on PATH (pip install 'moto[server]', or BERTCLF_S3=0)"
  fi

  local ray_temp_dir="$RAY_TEMP_DIR_DEFAULT"
  case "$ray_temp_dir" in
    / | /tmp | /tmp/ray | "${HOME:-/}" | "$REPO_ROOT")
      die "refusing BERTCLF_RAY_TMPDIR=$ray_temp_dir (use a dedicated directory)" ;;
  esac

  load_state
  if [[ -f "$STATE_FILE" ]]; then
    if pid_alive "$MOTO_PID" || [[ -n "$(ray_pids_for "${RAY_TEMP_DIR:-$ray_temp_dir}")" ]]; then
      die "already up (state in $STATE_DIR); run 'cluster/local.sh down' first"
    fi
    log "removing stale state dir $STATE_DIR"
    rm -rf -- "$STATE_DIR"
  fi
  if [[ -n "$(ray_pids_for "$ray_temp_dir")" ]]; then
    die "a Ray cluster with --temp-dir=$ray_temp_dir is already running (not recorded here);" \
      "stop it or set BERTCLF_RAY_TMPDIR"
  fi

  # Fail early and clearly on port clashes (another Ray / another moto).
  local port
  for port in "$RAY_PORT" "$RAY_DASHBOARD_PORT"; do
    port_open "$port" && die "port ${HOST}:$port is already in use (set RAY_PORT / RAY_DASHBOARD_PORT)"
  done
  if [[ "$BERTCLF_S3" != "0" ]] && port_open "$S3_PORT"; then
    die "port ${HOST}:$S3_PORT is already in use (set S3_PORT, or BERTCLF_S3=0)"
  fi
  # Ports Ray would otherwise take at fixed defaults: if another Ray on this machine
  # (e.g. a test's ray.init()) holds them, move ours to a free port instead of failing.
  local agent_port="${RAY_DASHBOARD_AGENT_PORT:-52365}" client_port="${RAY_CLIENT_PORT:-10001}"
  if [[ -z "${RAY_DASHBOARD_AGENT_PORT:-}" ]] && port_open "$agent_port"; then
    agent_port="$(free_port)"
    log "port 52365 (dashboard agent) is taken, using $agent_port"
  fi
  if [[ -z "${RAY_CLIENT_PORT:-}" ]] && port_open "$client_port"; then
    client_port="$(free_port)"
    log "port 10001 (Ray client server) is taken, using $client_port"
  fi

  mkdir -p -- "$STATE_DIR"
  printf '*\n' >"$STATE_DIR/.gitignore"   # keep the state dir out of git
  {
    printf 'RAY_TEMP_DIR=%q\n' "$ray_temp_dir"
    printf 'RAY_PORT_STATE=%q\n' "$RAY_PORT"
    printf 'RAY_DASHBOARD_PORT_STATE=%q\n' "$RAY_DASHBOARD_PORT"
    printf 'S3_PORT_STATE=%q\n' "$S3_PORT"
    printf 'BERTCLF_S3_STATE=%q\n' "$BERTCLF_S3"
  } >"$STATE_FILE"

  # If anything below fails, tear down what was started so far.
  trap up_cleanup EXIT

  # Token auth off: with a token lying around (~/.ray) the jobs CLI and the
  # cluster otherwise disagree and every `ray job submit` is rejected.
  export RAY_AUTH_MODE=disabled

  if [[ "$BERTCLF_S3" != "0" ]]; then
    # Jobs run inside the Ray processes and inherit their environment, so the S3
    # endpoint and dummy credentials must be set before `ray start`.
    export AWS_ENDPOINT_URL="http://${HOST}:${S3_PORT}" AWS_ACCESS_KEY_ID=testing \
      AWS_SECRET_ACCESS_KEY=testing AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
    log "starting moto S3 server on ${HOST}:${S3_PORT} (log: $STATE_DIR/moto.log)"
    nohup moto_server -H "$HOST" -p "$S3_PORT" >"$STATE_DIR/moto.log" 2>&1 </dev/null &
    local moto_pid=$!
    printf 'MOTO_PID=%q\n' "$moto_pid" >>"$STATE_FILE"
    printf '%s\n' "$moto_pid" >"$STATE_DIR/moto.pid"
  fi

  # Dashboard/jobs API, dashboard agent and moto listen on 127.0.0.1 only. Note that
  # Ray 2.60 itself replaces a loopback --node-ip-address with the machine's routable
  # IP (services.resolve_ip_for_localhost) and the GCS binds all interfaces, so on a
  # shared host keep the GCS port (RAY_PORT) firewalled.
  local -a ray_args=(
    start --head
    --node-ip-address="$HOST"
    --port="$RAY_PORT"
    --dashboard-host="$HOST"
    --dashboard-port="$RAY_DASHBOARD_PORT"
    --num-cpus="$RAY_NUM_CPUS"
    --include-dashboard=true
    --disable-usage-stats
    --temp-dir="$ray_temp_dir"
    --dashboard-agent-listen-port="$agent_port"
    --ray-client-server-port="$client_port"
  )
  [[ -n "${RAY_NUM_GPUS:-}" ]] && ray_args+=(--num-gpus="$RAY_NUM_GPUS")
  if [[ -n "${RAY_START_EXTRA_ARGS:-}" ]]; then
    local -a extra
    read -r -a extra <<<"$RAY_START_EXTRA_ARGS"
    ray_args+=("${extra[@]}")
  fi
  log "ray ${ray_args[*]}  (log: $STATE_DIR/ray-start.log)"
  if ! ray "${ray_args[@]}" >"$STATE_DIR/ray-start.log" 2>&1 </dev/null; then
    tail -n 30 "$STATE_DIR/ray-start.log" >&2 || true
    die "ray start failed"
  fi
  if [[ -L "$ray_temp_dir/session_latest" ]]; then
    printf 'RAY_SESSION_DIR=%q\n' "$(readlink -f "$ray_temp_dir/session_latest")" >>"$STATE_FILE"
  fi

  local deadline=$((SECONDS + RAY_WAIT_S))
  log "waiting for the jobs API on http://${HOST}:${RAY_DASHBOARD_PORT} (up to ${RAY_WAIT_S}s)"
  until http_ok "http://${HOST}:${RAY_DASHBOARD_PORT}/api/version" \
    && http_ok "http://${HOST}:${RAY_DASHBOARD_PORT}/api/jobs/"; do
    ((SECONDS < deadline)) || die "Ray dashboard did not answer within ${RAY_WAIT_S}s" \
      "(logs: $ray_temp_dir/session_latest/logs/dashboard.log)"
    sleep 1
  done

  if [[ "$BERTCLF_S3" != "0" ]]; then
    deadline=$((SECONDS + 60))
    until port_open "$S3_PORT"; do
      pid_alive "$moto_pid" || { tail -n 20 "$STATE_DIR/moto.log" >&2 || true; die "moto_server exited"; }
      ((SECONDS < deadline)) || die "moto S3 server did not answer on port $S3_PORT within 60s"
      sleep 0.5
    done
  fi
  trap - EXIT

  env_line "$RAY_DASHBOARD_PORT" "$BERTCLF_S3" "$S3_PORT" >"$STATE_DIR/env.sh"
  log "up: Ray dashboard http://${HOST}:${RAY_DASHBOARD_PORT}, GCS ${HOST}:${RAY_PORT}," \
    "temp dir $ray_temp_dir$([[ "$BERTCLF_S3" != "0" ]] && printf ', S3 http://%s:%s' "$HOST" "$S3_PORT")"
  log "use this env (also in $STATE_DIR/env.sh); note: unset RAY_ADDRESS before a plain" \
    "ray.init()/pytest in the same shell - an http:// RAY_ADDRESS is only for the jobs API"
  env_line "$RAY_DASHBOARD_PORT" "$BERTCLF_S3" "$S3_PORT"
}

cmd_down() {
  load_state
  local ray_temp_dir="${RAY_TEMP_DIR:-$RAY_TEMP_DIR_DEFAULT}"

  # moto: only by the pid we saved, and only if that pid still is a moto_server
  if [[ -n "$MOTO_PID" ]]; then
    if pid_alive "$MOTO_PID" && pid_cmd_has "$MOTO_PID" moto_server; then
      log "stopping moto_server (pid $MOTO_PID)"
      terminate_pids "$MOTO_PID"
    else
      log "moto_server (pid $MOTO_PID) is not running"
    fi
  fi

  local -a pids=()
  mapfile -t pids < <(ray_pids_for "$ray_temp_dir")
  if ((${#pids[@]})); then
    log "stopping Ray cluster with --temp-dir=$ray_temp_dir: ${#pids[@]} processes (${pids[*]})"
    terminate_pids "${pids[@]}"
    # workers that were still being spawned while we stopped the raylet
    mapfile -t pids < <(ray_pids_for "$ray_temp_dir")
    ((${#pids[@]})) && terminate_pids "${pids[@]}"
  else
    log "no Ray processes with --temp-dir=$ray_temp_dir"
  fi

  if [[ -d "$STATE_DIR" ]]; then
    rm -rf -- "$STATE_DIR"
    log "removed $STATE_DIR"
  fi
  log "down"
}

cmd_status() {
  load_state
  local ray_temp_dir="${RAY_TEMP_DIR:-$RAY_TEMP_DIR_DEFAULT}"
  local dash_port="${RAY_DASHBOARD_PORT_STATE:-$RAY_DASHBOARD_PORT}"
  local gcs_port="${RAY_PORT_STATE:-$RAY_PORT}"
  local s3_port="${S3_PORT_STATE:-$S3_PORT}"
  local s3_enabled="${BERTCLF_S3_STATE:-$BERTCLF_S3}"
  local ok=0 n

  if [[ -f "$STATE_FILE" ]]; then
    echo "state:  $STATE_DIR"
  else
    echo "state:  none (not started by cluster/local.sh up)"
    ok=1
  fi

  n="$(ray_pids_for "$ray_temp_dir" | wc -l)"
  if ((n > 0)) && http_ok "http://${HOST}:${dash_port}/api/version"; then
    echo "ray:    up   ($n processes, --temp-dir=$ray_temp_dir, GCS ${HOST}:${gcs_port}, jobs API http://${HOST}:${dash_port})"
  elif ((n > 0)); then
    echo "ray:    starting/degraded ($n processes, jobs API http://${HOST}:${dash_port} not answering)"
    ok=1
  else
    echo "ray:    down (no processes with --temp-dir=$ray_temp_dir)"
    ok=1
  fi

  if [[ "$s3_enabled" == "0" ]]; then
    echo "s3:     disabled (BERTCLF_S3=0)"
  elif pid_alive "$MOTO_PID" && port_open "$s3_port"; then
    echo "s3:     up   (moto_server pid $MOTO_PID, http://${HOST}:${s3_port})"
  elif pid_alive "$MOTO_PID"; then
    echo "s3:     starting (moto_server pid $MOTO_PID, port $s3_port not answering yet)"
    ok=1
  else
    echo "s3:     down"
    ok=1
  fi

  if [[ -f "$STATE_DIR/env.sh" ]]; then
    echo "env:    $(cat "$STATE_DIR/env.sh")"
  fi
  return "$ok"
}

main() {
  if (($# != 1)); then
    usage
    exit 2
  fi
  case "$1" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    -h | --help | help) usage ;;
    *)
      log "unknown command: $1"
      usage
      exit 2
      ;;
  esac
}

main "$@"
