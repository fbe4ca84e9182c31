# Shared settings and helpers for up.sh / down.sh / status.sh. Sourced, not run.
# shellcheck shell=bash
# shellcheck disable=SC2034  # variables are used by the scripts that source this file

# Everything the cluster writes (state, logs, pid files, MariaDB data, fake GPUs) lives here,
# so `down.sh && rm -rf "$LAUNCHER_SLURM_DIR"` resets it completely.
SLURM_DIR=${LAUNCHER_SLURM_DIR:-/var/tmp/launcher-slurm}
CLUSTER_NAME=launcher
NODE_NAME=$(hostname -s)
DB_PORT=3307          # private MariaDB on 127.0.0.1; not 3306 so a system MariaDB can coexist
DB_USER=slurm
DB_PASS=launcher-slurm  # local test DB bound to 127.0.0.1 only
TEST_USER=slurmtest
TEST_UID=1500

# Stop order (down.sh); up.sh starts them in reverse.
DAEMONS=(slurmd slurmctld slurmdbd mariadbd munged)

pidfile_of() {
  case "$1" in
    munged) echo "$SLURM_DIR/munge/munged.pid" ;;
    mariadbd) echo "$SLURM_DIR/mysql/mysqld.pid" ;; # mysql user can't write into a root-owned dir
    *) echo "$SLURM_DIR/run/$1.pid" ;;
  esac
}

# Print the PID of daemon $1 and return 0 if it is really running.
# PID 1 here does not reap exited daemons, so `kill -0` succeeds on zombies: read the state from
# /proc/PID/stat instead, and check the command name so a reused PID is not mistaken for ours.
daemon_pid() {
  local f pid stat state comm
  f=$(pidfile_of "$1")
  [ -r "$f" ] || return 1
  read -r pid <"$f" 2>/dev/null || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  comm=${stat#*(}
  comm=${comm%)*}
  state=${stat##*) }
  state=${state%% *}
  [ "$comm" = "$1" ] || return 1
  case "$state" in Z | X | x) return 1 ;; esac
  echo "$pid"
}

# Node state from the controller, e.g. idle / mixed / allocated; empty if it does not answer.
node_state() {
  timeout 5 sinfo -h -n "$NODE_NAME" -o %T 2>/dev/null | head -n1 || true
}

now() { echo "${EPOCHREALTIME/[.,]/}"; } # microseconds
elapsed() { # seconds since $1 (from now), two decimals
  local d=$(($(now) - $1))
  printf '%d.%02d' $((d / 1000000)) $((d % 1000000 / 10000))
}
