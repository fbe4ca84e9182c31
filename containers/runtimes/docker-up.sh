#!/usr/bin/env bash
# docker-up.sh: start Debian's dockerd (docker.io) with private data-root, exec-root, pid file and socket.
# Idempotent: a daemon already answering on our socket is left alone.
#   usage: containers/runtimes/docker-up.sh      then: source /var/tmp/launcher-containers/env.sh
# It never touches /var/lib/docker or /var/run/docker.sock, so it coexists with a system docker.
# shellcheck source=containers/runtimes/common.sh
source "$(dirname "$0")/common.sh"
need_root

DIR="$LAUNCHER_CONTAINERS_STATE/docker"
SOCK="$DIR/docker.sock"
PIDFILE="$DIR/dockerd.pid"
# The host may carry a newer docker CLI (/usr/local/bin/docker 28.x) than Debian's 20.10 daemon:
# pinning the API version makes any client speak the daemon's dialect (1.41 = Docker 20.10).
API_VERSION=1.41
export DOCKER_HOST="unix://$SOCK" DOCKER_API_VERSION=$API_VERSION

# Debian's package starts no service here: /usr/sbin/policy-rc.d (or the lack of an init) stops it.
apt_install docker.io
DOCKERD=/usr/sbin/dockerd
[[ -x $DOCKERD ]] || die "$DOCKERD missing after installing docker.io" "apt-get install --reinstall docker.io"
# Prefer Debian's client when present: it matches the daemon exactly.
CLIENT=$(command -v docker)
[[ -x /usr/bin/docker ]] && CLIENT=/usr/bin/docker

answering() { timeout 5 "$CLIENT" version --format '{{.Server.Version}}' >/dev/null 2>&1; }

if [[ -f $PIDFILE ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null && answering; then
    done_msg "dockerd already running (pid $(cat "$PIDFILE"), socket $SOCK)"
else
    mkdir -p "$DIR/data" "$DIR/exec"
    rm -f "$PIDFILE" "$SOCK"
    # setsid: the daemon must outlive this script and the test session that started it.
    setsid "$DOCKERD" \
        --data-root "$DIR/data" --exec-root "$DIR/exec" --pidfile "$PIDFILE" \
        -H "unix://$SOCK" --log-level warn \
        > "$DIR/dockerd.log" 2>&1 < /dev/null &
    for _ in $(seq 1 150); do
        answering && break
        kill -0 $! 2>/dev/null || die "dockerd exited at start; last lines of $DIR/dockerd.log:
$(tail -n 15 "$DIR/dockerd.log")" "read $DIR/dockerd.log"
        sleep 0.1
    done
    answering || die "dockerd did not answer on $SOCK within 15 s" "read $DIR/dockerd.log"
    done_msg "dockerd $("$CLIENT" version --format '{{.Server.Version}}') up (pid $(cat "$PIDFILE"), socket $SOCK)"
fi

# A non-root user reaches a rootful daemon through the socket's group (dockerd gives it group docker), as on
# a cluster that offers docker at all; the shim then runs the task with --user of that user.
while IFS= read -r user; do
    id -nG "$user" | tr ' ' '\n' | grep -qx docker || { usermod -aG docker "$user" && log "added $user to group docker"; }
done < <(container_users)

env_file_set DOCKER_HOST "unix://$SOCK"
env_file_set DOCKER_API_VERSION "$API_VERSION"
echo "export DOCKER_HOST=unix://$SOCK DOCKER_API_VERSION=$API_VERSION"
