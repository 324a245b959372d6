#!/usr/bin/env bash
# A local Apache Flink 1.19.1 standalone session cluster: one JobManager and
# two TaskManagers, each its own JVM, on localhost (installed by `make flink`).
#
#   tools/flink_cluster.sh start    start it (or top it up to 2 TaskManagers);
#                                   waits until both are registered
#   tools/flink_cluster.sh stop     stop it; no Flink process is left
#   tools/flink_cluster.sh status   the JobManager's REST address and its
#                                   TaskManagers; exit 1 when not running
#
# Environment: SKINLESION_FLINK_PORT (REST port, default 8081; the JobManager's
# RPC port is REST-1958, 6123 by default), SKINLESION_FLINK_RUN_DIR (config,
# logs and pid files; default build/flink/run), SKINLESION_FLINK_TASKMANAGERS
# (default 2), SKINLESION_FLINK_START_TIMEOUT (seconds, default 90).
#
# Memory for a 2-core / 24 GB machine: JobManager 1 GB, each TaskManager
# 3 GB (512 MB of it network buffers) with one slot; 7 GB in all (the Python
# SDK harness runs outside Flink's JVMs).
#
# Every Flink process keeps its working files (the TaskManagers' blob caches,
# which hold each job's staged Beam artifacts, tens of MB per job; spill
# files; the JobManager's blob store) under RUN_DIR/tmp, not /tmp; 'stop'
# deletes them.  In /tmp they outlived the cluster: 600 MB per TaskManager
# per test run.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FLINK_HOME=$ROOT/build/flink/dist/pyflink
PORT=${SKINLESION_FLINK_PORT:-8081}
RPC_PORT=$(( PORT - 1958 ))
RUN_DIR=${SKINLESION_FLINK_RUN_DIR:-$ROOT/build/flink/run}
TMP_DIR=$RUN_DIR/tmp
TASKMANAGERS=${SKINLESION_FLINK_TASKMANAGERS:-2}
START_TIMEOUT=${SKINLESION_FLINK_START_TIMEOUT:-90}
REST=http://localhost:$PORT
export FLINK_CONF_DIR=$RUN_DIR/conf FLINK_LOG_DIR=$RUN_DIR/log \
       FLINK_PID_DIR=$RUN_DIR/pid FLINK_IDENT_STRING=skinlesion

die() { echo "flink_cluster: $*" >&2; exit 1; }

# Whether a pid is a live process: a killed JVM can linger a moment as a
# zombie (where nothing reaps it), which kill -0 still reports.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

# The pids that flink-daemon.sh recorded, of processes still alive.
live_pids() {  # live_pids standalonesession|taskexecutor
  local file=$FLINK_PID_DIR/flink-$FLINK_IDENT_STRING-$1.pid pid
  [ -f "$file" ] || return 0
  while read -r pid; do
    [ -n "$pid" ] && alive "$pid" && echo "$pid"
  done < "$file"
  return 0
}

# How many TaskManagers the JobManager lists that are alive; empty if it is
# down.  A SIGKILLed TaskManager stays listed until its heartbeat times out
# (heartbeat.timeout, 10 s), so each listed one counts only while its RPC
# endpoint (the port in its pekko path, which its JVM owns) accepts a
# connection: counting the listing alone, 'start' after a kill saw the dead
# one and its replacement's slot as two, then one a moment later.
registered_taskmanagers() {
  curl -sf --max-time 3 "$REST/taskmanagers" 2>/dev/null | python3 -c '
import json, re, socket, sys
alive = 0
for tm in json.load(sys.stdin)["taskmanagers"]:
  host, port = re.search(r"@([^:/]+):(\d+)/", tm["path"]).groups()
  try:
    socket.create_connection((host, int(port)), timeout=1).close()
    alive += 1
  except OSError:
    pass
print(alive)' 2>/dev/null || true
}

write_config() {
  mkdir -p "$FLINK_CONF_DIR" "$FLINK_LOG_DIR" "$FLINK_PID_DIR" "$TMP_DIR"
  cp "$FLINK_HOME"/conf/log4j*.properties "$FLINK_CONF_DIR/"
  # Java 17's module flags, as Flink's own config.yaml has them.
  local java_opts
  java_opts=$(sed -n 's/^ *all: \(--add-exports.*\)$/\1/p' "$FLINK_HOME/conf/config.yaml")
  [ -n "$java_opts" ] || die "no env.java.opts.all in $FLINK_HOME/conf/config.yaml"
  cat > "$FLINK_CONF_DIR/config.yaml" <<EOF
# Written by tools/flink_cluster.sh.
env.java.opts.all: $java_opts
io.tmp.dirs: $TMP_DIR
jobmanager.rpc.address: localhost
jobmanager.rpc.port: $RPC_PORT
jobmanager.bind-host: localhost
jobmanager.memory.process.size: 1024m
jobmanager.execution.failover-strategy: region
taskmanager.bind-host: localhost
taskmanager.host: localhost
taskmanager.numberOfTaskSlots: 1
taskmanager.memory.process.size: 3072m
# Beam's batch jobs run a dozen or more operators in one slot at once, each
# with its shuffle channels: 512 MB of network buffers (16384 of 32 KB).
taskmanager.memory.network.min: 512m
taskmanager.memory.network.max: 512m
parallelism.default: 2
rest.address: localhost
rest.bind-address: localhost
rest.port: $PORT
# A lost TaskManager is noticed in seconds and the job restarted.  The
# exponential-delay strategy counts the burst of task failures one lost
# TaskManager causes as one failure (fixed-delay counts each and gives up at
# once); the restarted tasks wait up to a minute for a slot, which a
# replacement TaskManager ('start' tops the cluster up, as a Kubernetes
# Deployment would) provides.  With no replacement the job fails after 4
# attempts, within about 5 minutes.
heartbeat.interval: 2000
heartbeat.timeout: 10000
restart-strategy.type: exponential-delay
restart-strategy.exponential-delay.initial-backoff: 1 s
restart-strategy.exponential-delay.backoff-multiplier: 2.0
restart-strategy.exponential-delay.max-backoff: 10 s
restart-strategy.exponential-delay.attempts-before-reset-backoff: 4
restart-strategy.exponential-delay.reset-backoff-threshold: 1 min
slot.request.timeout: 60000
# The SDK harness's gRPC channels can be slow to close; don't let a leak check
# kill a TaskManager on a 2-core machine.
classloader.check-leaked-classloader: false
EOF
}

status() {
  local n
  n=$(registered_taskmanagers)
  if [ -z "$n" ]; then
    echo "Flink is not running at $REST"
    return 1
  fi
  echo "Flink JobManager at $REST (RPC localhost:$RPC_PORT): $n TaskManager(s) registered"
  echo "  JobManager pid: $(live_pids standalonesession | tr '\n' ' ')"
  echo "  TaskManager pids: $(live_pids taskexecutor | tr '\n' ' ')"
  echo "  logs: $FLINK_LOG_DIR"
  [ "$n" -ge "$TASKMANAGERS" ]
}

start() {
  [ -x "$FLINK_HOME/bin/jobmanager.sh" ] \
    || die "Flink is not installed in $FLINK_HOME: run 'make flink'"
  command -v java >/dev/null || die "java is not on PATH"
  if [ -z "$(live_pids standalonesession)" ]; then
    if curl -s --max-time 3 -o /dev/null "$REST/config"; then
      die "something else answers at $REST (not this cluster): stop it or set SKINLESION_FLINK_PORT"
    fi
    write_config
    "$FLINK_HOME/bin/jobmanager.sh" start > /dev/null
  fi
  local have
  have=$(live_pids taskexecutor | wc -l)
  while [ "$have" -lt "$TASKMANAGERS" ]; do
    "$FLINK_HOME/bin/taskmanager.sh" start > /dev/null
    have=$(( have + 1 ))
  done
  local deadline=$(( $(date +%s) + START_TIMEOUT )) n=
  while [ "$(date +%s)" -lt "$deadline" ]; do
    n=$(registered_taskmanagers)
    if [ -n "$n" ] && [ "$n" -ge "$TASKMANAGERS" ]; then
      status
      return 0
    fi
    if [ -z "$(live_pids standalonesession)" ]; then
      break
    fi
    sleep 1
  done
  echo "flink_cluster: the cluster did not come up within ${START_TIMEOUT} s:" \
       "${n:-no JobManager answering at $REST}, want $TASKMANAGERS TaskManagers" \
       "registered. Last log lines ($FLINK_LOG_DIR):" >&2
  for log in "$FLINK_LOG_DIR"/*.log "$FLINK_LOG_DIR"/*.out; do
    [ -f "$log" ] && { echo "== $log" >&2; tail -n 15 "$log" >&2; }
  done
  exit 1
}

stop() {
  local pids
  pids=$( { live_pids taskexecutor; live_pids standalonesession; } | tr '\n' ' ')
  if [ -z "${pids// /}" ]; then
    echo "Flink is not running (no live pids in $FLINK_PID_DIR)"
    rm -f "$FLINK_PID_DIR"/*.pid
    rm -rf "$TMP_DIR"
    return 0
  fi
  # shellcheck disable=SC2086
  kill $pids 2>/dev/null || true
  local deadline=$(( $(date +%s) + 20 )) left=$pids
  while [ -n "${left// /}" ] && [ "$(date +%s)" -lt "$deadline" ]; do
    sleep 0.5
    left=
    for pid in $pids; do alive "$pid" && left+="$pid "; done
  done
  if [ -n "${left// /}" ]; then
    echo "flink_cluster: killing $left(no exit within 20 s)" >&2
    # shellcheck disable=SC2086
    kill -9 $left 2>/dev/null || true
  fi
  rm -f "$FLINK_PID_DIR"/*.pid
  rm -rf "$TMP_DIR"
  echo "Flink stopped (pids $pids)"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
