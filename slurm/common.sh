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

# The second compute node (partition 'multi' only): a slurmd in its own network namespace, joined to the
# host by a veth pair on a private /24. Both ends of the pair carry the same interface name (they live in
# different namespaces), so one GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME value is right on both nodes.
NODE2_NAME=${LAUNCHER_SLURM_NODE2:-$NODE_NAME-n2} # sorts after NODE_NAME: `sinfo -N` lists the first node first
NETNS=${LAUNCHER_SLURM_NETNS:-launcher-n2}
NET_IF=${LAUNCHER_SLURM_NET_IF:-launcher0}     # <= 15 characters
NET_PREFIX=${LAUNCHER_SLURM_NET:-10.231.0}     # first three octets of a /24 unused on this machine
HOST_ADDR=$NET_PREFIX.1                        # the first node (this host) and slurmctld
NODE2_ADDR=$NET_PREFIX.2
NODE2_DIR=$SLURM_DIR/n2 # node-local state of the second node: run/, spool/, gpu/ (mounted over run/ and spool/slurmd)

# Stop order (down.sh); up.sh starts them in reverse.
DAEMONS=(slurmd-n2 slurmd slurmctld slurmdbd mariadbd munged)

pidfile_of() {
  case "$1" in
    munged) echo "$SLURM_DIR/munge/munged.pid" ;;
    mariadbd) echo "$SLURM_DIR/mysql/mysqld.pid" ;; # mysql user can't write into a root-owned dir
    # The second slurmd writes the configured SlurmdPidFile ($SLURM_DIR/run/slurmd.pid) inside its own mount
    # namespace, where $NODE2_DIR/run is mounted over $SLURM_DIR/run.
    slurmd-n2) echo "$NODE2_DIR/run/slurmd.pid" ;;
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
  read -r pid 2>/dev/null <"$f" || return 1 # 2> first: the daemon may delete the file meanwhile
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  comm=${stat#*(}
  comm=${comm%)*}
  state=${stat##*) }
  state=${state%% *}
  [ "$comm" = "${1%-n2}" ] || return 1 # slurmd-n2 is a slurmd
  case "$state" in Z | X | x) return 1 ;; esac
  echo "$pid"
}

# Node state from the controller, e.g. idle / mixed / allocated; empty if it does not answer.
# $1: node name (default: the first node).
node_state() {
  timeout 5 sinfo -h -n "${1:-$NODE_NAME}" -o %T 2>/dev/null | head -n1 || true
}

# True if the second node's namespace exists and the host end of its veth pair has its address.
net_up() {
  [ -e "/run/netns/$NETNS" ] && ip -o -4 addr show dev "$NET_IF" 2>/dev/null | grep -qF " $HOST_ADDR/24 "
}

now() { echo "${EPOCHREALTIME/[.,]/}"; } # microseconds
elapsed() { # seconds since $1 (from now), two decimals
  local d=$(($(now) - $1))
  printf '%d.%02d' $((d / 1000000)) $((d % 1000000 / 10000))
}

# Remove the second node's network: deleting the host end of the veth pair deletes both ends.
# Idempotent. (The namespace itself lives on while a process still runs in it; nothing can reach it then.)
net_down() {
  if ip link show "$NET_IF" >/dev/null 2>&1; then ip link del "$NET_IF"; fi
  if [ -e "/run/netns/$NETNS" ]; then ip netns del "$NETNS"; fi
  rm -rf "/etc/netns/$NETNS"
}
