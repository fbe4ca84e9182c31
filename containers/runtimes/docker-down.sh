#!/usr/bin/env bash
# docker-down.sh: stop the dockerd that docker-up.sh started (found by its pid file; nothing else is killed).
# shellcheck source=containers/runtimes/common.sh
source "$(dirname "$0")/common.sh"

DIR="$LAUNCHER_CONTAINERS_STATE/docker"
PIDFILE="$DIR/dockerd.pid"
if [[ ! -f $PIDFILE ]]; then
    done_msg "no $PIDFILE: dockerd not running"
    exit 0
fi
pid=$(cat "$PIDFILE")
if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    # dockerd stops its containers and its own containerd before exiting; give it 30 s.
    for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "dockerd (pid $pid) ignored SIGTERM for 30 s: sending SIGKILL"
        kill -KILL "$pid"
    fi
fi
rm -f "$PIDFILE" "$DIR/docker.sock"
done_msg "dockerd (pid $pid) stopped"
