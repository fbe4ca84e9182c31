#!/usr/bin/env bash
# Bring up a real Slurm cluster on this machine (root, no systemd needed): munged, MariaDB + slurmdbd
# (accounting: submitit reads job states with sacct), slurmctld, slurmd for this host's node, and a
# second slurmd in its own network namespace (node <host>-n2, partition 'multi' only) for multi-node jobs
# (LAUNCHER_SLURM_SECOND_NODE=0: without it, for machines that allow no network namespace; auto by default).
# Config goes to /etc/slurm so plain sbatch/sinfo/sacct and submitit work without extra env;
# state, logs and pid files go under $LAUNCHER_SLURM_DIR (default /var/tmp/launcher-slurm).
# Idempotent: exits at once if the cluster is already up with the same config.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=SCRIPTDIR/common.sh
. "$HERE/common.sh"
T0=$(now)

D=$SLURM_DIR
GPU_COUNT=4
GPU2_COUNT=2 # the second node's fake GPUs

# The second node lives in a network namespace, which needs CAP_NET_ADMIN/CAP_SYS_ADMIN (a container without
# them cannot make one). LAUNCHER_SLURM_SECOND_NODE: auto (default: when this machine allows it), 1 (required:
# fail otherwise) or 0 (one node; partition 'multi' then holds only it, and the multi-node tests skip).
SECOND_NODE=${LAUNCHER_SLURM_SECOND_NODE:-auto}
case "$SECOND_NODE" in
  0 | 1 | auto) ;;
  *)
    echo "up.sh: LAUNCHER_SLURM_SECOND_NODE=$SECOND_NODE: allowed are auto, 1 and 0" >&2
    exit 2
    ;;
esac
if [ "$SECOND_NODE" = auto ]; then
  if [ -e "/run/netns/$NETNS" ] || unshare --net true 2>/dev/null; then
    SECOND_NODE=1
  else
    SECOND_NODE=0
    echo "slurm: this machine allows no network namespace (no CAP_NET_ADMIN?): one node only, multi-node" \
      "tests skip (LAUNCHER_SLURM_SECOND_NODE=0 to ask for that, 1 to insist on two nodes)" >&2
  fi
fi
NEEDED=() # the daemons this cluster runs: all of common.sh's, less the second slurmd without a second node
for d in "${DAEMONS[@]}"; do
  [ "$SECOND_NODE" = 0 ] && [ "$d" = slurmd-n2 ] || NEEDED+=("$d")
done
if [ "$SECOND_NODE" = 0 ]; then
  HOST_ADDR=127.0.0.1 # no veth pair: the first node is reached on loopback, as a one-node cluster is
  NODE2_CONF=
  NODE2_GRES=
  MULTI_NODES=$NODE_NAME
else
  NODE2_CONF="NodeName=$NODE2_NAME NodeAddr=$NODE2_ADDR CPUs=4 Sockets=1 CoresPerSocket=4 ThreadsPerCore=1 RealMemory=8000 Gres=gpu:$GPU2_COUNT State=UNKNOWN"
  NODE2_GRES="NodeName=$NODE2_NAME Name=gpu File=$NODE2_DIR/gpu/nvidia[0-$((GPU2_COUNT - 1))]"
  MULTI_NODES=$NODE_NAME,$NODE2_NAME
fi

# ---------------------------------------------------------------- config files (as strings)
SLURM_CONF="# Written by launcher slurm/up.sh: a test cluster on one machine. Edits are overwritten.
ClusterName=$CLUSTER_NAME
# The host's veth address, not 127.0.0.1: the second node (own network namespace) must reach it too.
SlurmctldHost=$NODE_NAME($HOST_ADDR)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# Requeued jobs wait cred_expire before restarting (default 120 s; 5 is the minimum accepted).
AuthInfo=cred_expire=10
StateSaveLocation=$D/spool/slurmctld
SlurmdSpoolDir=$D/spool/slurmd
SlurmctldPidFile=$(pidfile_of slurmctld)
SlurmdPidFile=$(pidfile_of slurmd)
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# No cgroups needed (works in containers/VMs without a delegated cgroup tree).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, one job takes all node memory and the others pend.
DefMemPerCPU=256
SchedulerType=sched/backfill
# Start jobs ~1 s after sbatch instead of ~3 s.
SchedulerParameters=batch_sched_delay=0,sched_interval=2,sched_min_interval=0,bf_interval=1,bf_resolution=1
# Jobs in partition 'high' preempt (requeue) jobs in 'debug'; they get USR2 first, then SIGTERM after GraceTime.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
JobRequeue=1
KillWait=2
MinJobAge=600
MaxArraySize=10001
MailProg=/bin/true
ReturnToService=2
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
JobCompType=jobcomp/none
# The VM has 2 cores; config_overrides lets the node advertise 8 CPUs and 16 GB anyway.
SlurmdParameters=config_overrides
# NodeAddr is what slurmctld, slurmd (step fan-out) and jobs (MASTER_ADDR) use to reach a node: the veth
# addresses, which both network namespaces can reach.
NodeName=$NODE_NAME NodeAddr=$HOST_ADDR CPUs=8 Sockets=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=16000 Gres=gpu:$GPU_COUNT State=UNKNOWN
$NODE2_CONF
PartitionName=debug Nodes=$NODE_NAME Default=YES PriorityTier=1 GraceTime=10 MaxTime=INFINITE State=UP
PartitionName=high Nodes=$NODE_NAME PriorityTier=10 GraceTime=10 MaxTime=INFINITE State=UP
# Multi-node jobs (sbatch -p multi -N2). The only partition with the second node, so single-node jobs in
# debug/high never land there. Same tier as debug: neither preempts the other; high preempts both.
PartitionName=multi Nodes=$MULTI_NODES PriorityTier=1 GraceTime=10 MaxTime=INFINITE State=UP
"

# Fake GPUs: character devices (plain files are rejected by slurmd) named like NVIDIA's.
GRES_CONF="# Written by launcher slurm/up.sh: fake GPUs (character devices, not real hardware).
AutoDetect=off
NodeName=$NODE_NAME Name=gpu File=$D/gpu/nvidia[0-$((GPU_COUNT - 1))]
$NODE2_GRES
"

SLURMDBD_CONF="# Written by launcher slurm/up.sh.
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$D/log/slurmdbd.log
PidFile=$(pidfile_of slurmdbd)
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
"

MYSQL_CNF="# Written by launcher slurm/up.sh: private MariaDB for slurmdbd.
[mysqld]
user=mysql
datadir=$D/mysql
socket=$D/mysql/mysqld.sock
pid-file=$(pidfile_of mariadbd)
log-error=$D/mysql/mysqld.err
bind-address=127.0.0.1
port=$DB_PORT
skip-name-resolve
# The minimums slurmdbd asks for (it logs a warning below them).
innodb_buffer_pool_size=128M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
[client]
socket=$D/mysql/mysqld.sock
"

same_file() { cmp -s "$1" <(printf '%s' "$2"); }
usable() { case "$1" in idle | mixed | allocated | completing) return 0 ;; esac; return 1; }

# ---------------------------------------------------------------- fast path: already up?
all_up=1
for d in "${NEEDED[@]}"; do
  daemon_pid "$d" >/dev/null || { all_up=0; break; }
done
if [ $all_up = 1 ] && { [ "$SECOND_NODE" = 0 ] || net_up; } &&
  same_file /etc/slurm/slurm.conf "$SLURM_CONF" &&
  same_file /etc/slurm/gres.conf "$GRES_CONF" &&
  same_file /etc/slurm/slurmdbd.conf "$SLURMDBD_CONF" &&
  same_file "$D/mysql.cnf" "$MYSQL_CNF"; then
  # Jobs may be running: any answering, usable node state counts as up.
  state=$(node_state)
  state2=$([ "$SECOND_NODE" = 0 ] && echo idle || node_state "$NODE2_NAME")
  if usable "$state" && usable "$state2"; then
    second=$([ "$SECOND_NODE" = 0 ] && echo "no second node" || echo "node $NODE2_NAME $state2")
    echo "slurm: already up (node $NODE_NAME $state, $second, state dir $D), checked in $(elapsed "$T0") s"
    exit 0
  fi
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "up.sh: must run as root" >&2
  exit 1
fi

# Partly up, or up with another config: restart everything from scratch.
for d in "${DAEMONS[@]}"; do # a running second node too, if this start drops it
  if daemon_pid "$d" >/dev/null; then
    echo "slurm: restarting (not all daemons up, node not usable, or config changed)"
    "$HERE/down.sh"
    break
  fi
done

# A controller or slurmd we have no pid file for (e.g. started with another LAUNCHER_SLURM_DIR) would
# hold the ports: say so instead of failing later with obscure errors. (Looking at the listening ports,
# not `scontrol ping`: with our veth address gone, ping waits ~2 s on a route to nowhere.)
if [ -n "$(ss -Hltn '( sport = :6817 or sport = :6818 )' 2>/dev/null)" ]; then
  echo "up.sh: ERROR: a slurmctld or slurmd not started from $D is running (ports 6817/6818 in use); stop it" \
    "with LAUNCHER_SLURM_DIR=<its dir> $HERE/down.sh" >&2
  exit 1
fi

fail() { # message, then the last lines of the given logs
  echo "up.sh: ERROR: $1" >&2
  shift
  for f in "$@"; do
    [ -f "$f" ] && { echo "--- last lines of $f:" >&2; tail -n 20 "$f" >&2; }
  done
  exit 1
}

# Poll a command until it succeeds, up to $1 seconds.
wait_for() {
  local limit=$1 i=0
  shift
  until "$@" >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -ge $((limit * 10)) ] && return 1
    sleep 0.1
  done
}

# Start a daemon detached from this shell: new session, no inherited stdin/stdout/stderr (a caller
# capturing our output, e.g. pytest, would otherwise wait for the daemons to close the pipe).
spawn() {
  local out=$1
  shift
  setsid "$@" </dev/null >>"$out" 2>&1 &
}

# ---------------------------------------------------------------- packages, user, dirs
T1=$(now)
"$HERE/install.sh"
T_PKG=$(elapsed "$T1")

# Unprivileged user for tests that submit as non-root (runuser -u slurmtest -- sbatch ...).
if ! id "$TEST_USER" >/dev/null 2>&1; then
  uid_opt=()
  getent passwd "$TEST_UID" >/dev/null || uid_opt=(-u "$TEST_UID")
  useradd -m -U -s /bin/bash "${uid_opt[@]}" "$TEST_USER"
fi

mkdir -p "$D"/{run,log,spool,gpu,munge,mysql}
chmod 755 "$D" # other users (munge, mysql, job owners) must traverse it
# Fresh start: job ids restart at 1, no stale jobs or node state. Logs start empty.
rm -rf "$D/spool/slurmctld" "$D/spool/slurmd" "$NODE2_DIR/spool" "$NODE2_DIR/run"
mkdir -p "$D/spool/slurmctld" "$D/spool/slurmd" "$NODE2_DIR"/{run,spool,gpu}
: >"$D/log/slurmctld.log"
: >"$D/log/slurmd.log"
: >"$D/log/slurmd-n2.log"
: >"$D/log/slurmdbd.log"

for i in $(seq 0 $((GPU_COUNT - 1))); do
  [ -c "$D/gpu/nvidia$i" ] || { rm -f "$D/gpu/nvidia$i"; mknod -m 0666 "$D/gpu/nvidia$i" c 195 "$i"; }
done
for i in $(seq 0 $((GPU2_COUNT - 1))); do
  f=$NODE2_DIR/gpu/nvidia$i
  [ -c "$f" ] || { rm -f "$f"; mknod -m 0666 "$f" c 195 "$i"; }
done

# ---------------------------------------------------------------- the second node's network
# A network namespace and a veth pair, no route out: traffic goes only between the two nodes.
# Made before slurmctld starts, since SlurmctldHost and the first node's NodeAddr are the host end.
net_down # a stale namespace or pair from an earlier run
if [ "$SECOND_NODE" = 1 ]; then
  ip netns add "$NETNS" || fail "ip netns add $NETNS failed"
  ip link add "$NET_IF" type veth peer name "$NET_IF" netns "$NETNS" || fail "ip link add $NET_IF (veth) failed"
  ip addr add "$HOST_ADDR/24" dev "$NET_IF"
  ip link set "$NET_IF" up
  ip -n "$NETNS" addr add "$NODE2_ADDR/24" dev "$NET_IF"
  ip -n "$NETNS" link set "$NET_IF" up
  ip -n "$NETNS" link set lo up
  # The second node's /etc/hosts (its slurmd gets it mounted over /etc/hosts; `ip netns exec` does the same
  # for a shell): both nodes' names resolve to their veth addresses. (The host's /etc/hosts maps this host's
  # name to 127.0.0.1, which the second node cannot reach; the host does not resolve the second node's name
  # at all: use the NodeAddr there.)
  mkdir -p "/etc/netns/$NETNS"
  printf '# Written by launcher slurm/up.sh for the second test node.\n127.0.0.1 localhost\n%s %s\n%s %s\n' \
    "$NODE2_ADDR" "$NODE2_NAME" "$HOST_ADDR" "$NODE_NAME" >"/etc/netns/$NETNS/hosts"
fi

mkdir -p /etc/slurm
printf '%s' "$SLURM_CONF" >/etc/slurm/slurm.conf
printf '%s' "$GRES_CONF" >/etc/slurm/gres.conf
# slurmdbd refuses a config readable by others (it holds the DB password).
install -m 600 /dev/null /etc/slurm/slurmdbd.conf
printf '%s' "$SLURMDBD_CONF" >/etc/slurm/slurmdbd.conf
printf '%s' "$MYSQL_CNF" >"$D/mysql.cnf"

# ---------------------------------------------------------------- munged
# Clients find munged at its default socket /run/munge/munge.socket.2.
mkdir -p /run/munge
chown munge:munge /run/munge "$D/munge"
chmod 755 "$D/munge" # readable pid file for status.sh as non-root
[ -s /etc/munge/munge.key ] || runuser -u munge -- mungekey --create
spawn "$D/log/munged.out" runuser -u munge -- /usr/sbin/munged \
  --pid-file="$(pidfile_of munged)" --log-file="$D/munge/munged.log"
wait_for 10 sh -c 'munge -n | unmunge' || fail "munged did not start" "$D/log/munged.out" "$D/munge/munged.log"

# ---------------------------------------------------------------- MariaDB
chown mysql:mysql "$D/mysql"
if [ ! -d "$D/mysql/mysql" ]; then
  mariadb-install-db --defaults-file="$D/mysql.cnf" --auth-root-authentication-method=socket \
    --skip-test-db >"$D/log/mariadb-install.log" 2>&1 ||
    fail "mariadb-install-db failed" "$D/log/mariadb-install.log"
fi
spawn "$D/log/mariadb.out" /usr/sbin/mariadbd --defaults-file="$D/mysql.cnf"
wait_for 30 mariadb-admin --defaults-file="$D/mysql.cnf" ping ||
  fail "MariaDB did not start" "$D/log/mariadb.out" "$D/mysql/mysqld.err"
# Old accounting rows would clash with job ids that restart at 1: drop them.
mariadb --defaults-file="$D/mysql.cnf" <<SQL
DROP DATABASE IF EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'localhost';
SQL

# ---------------------------------------------------------------- slurmdbd
spawn "$D/log/slurmdbd.out" /usr/sbin/slurmdbd
wait_for 30 sacctmgr -n -P list cluster ||
  fail "slurmdbd did not start" "$D/log/slurmdbd.out" "$D/log/slurmdbd.log"
# The cluster must exist in the DB before slurmctld registers with slurmdbd.
sacctmgr -i -Q add cluster "$CLUSTER_NAME" >/dev/null || fail "sacctmgr add cluster failed" "$D/log/slurmdbd.log"

# ---------------------------------------------------------------- slurmctld + slurmd
spawn "$D/log/slurmctld.out" /usr/sbin/slurmctld
spawn "$D/log/slurmd.out" /usr/sbin/slurmd
# The second slurmd: own network namespace, own hostname (UTS namespace), and its own mount namespace
# where its node-local dirs are mounted over the configured ones, so it uses the same slurm.conf (one
# config hash) and the same SlurmdPidFile/SlurmdSpoolDir paths as the first node without clashing with
# it (%n in those paths would move the first node's files, which tests/faults relies on). -L: own log.
# nsenter, not `ip netns exec`: that remounts /sys, hiding /sys/fs/cgroup, and slurmd then refuses to
# start ("Unable to initialize cgroup plugin") even with proctrack/linuxproc.
if [ "$SECOND_NODE" = 1 ]; then
  # shellcheck disable=SC2016  # expanded by the inner sh
  spawn "$D/log/slurmd-n2.out" unshare --uts --mount --propagation private -- \
    nsenter --net="/run/netns/$NETNS" -- sh -c '
    hostname "$1" && mount --bind "$3/run" "$2/run" && mount --bind "$3/spool" "$2/spool/slurmd" &&
    mount --bind "/etc/netns/$4/hosts" /etc/hosts &&
    exec /usr/sbin/slurmd -N "$1" -L "$2/log/slurmd-n2.log"' sh "$NODE2_NAME" "$D" "$NODE2_DIR" "$NETNS"
fi

# While they start (~1 s): an account for the test user. AccountingStorageEnforce is off, so
# associations are not required to run jobs; this only makes sacct/sshare show an account.
# (root already has its 'root' account.) Each sacctmgr add takes ~0.5 s here.
if ! sacctmgr -i -Q add account default Cluster="$CLUSTER_NAME" Description=default Organization=launcher >/dev/null ||
  ! sacctmgr -i -Q add user "$TEST_USER" DefaultAccount=default Cluster="$CLUSTER_NAME" >/dev/null; then
  fail "sacctmgr add account/user failed" "$D/log/slurmdbd.log"
fi

ready() { [ "$(node_state)" = idle ]; }
wait_for 60 ready ||
  fail "node $NODE_NAME not idle after 60 s (sinfo: '$(node_state)')" \
    "$D/log/slurmctld.out" "$D/log/slurmctld.log" "$D/log/slurmd.out" "$D/log/slurmd.log"
if [ "$SECOND_NODE" = 0 ]; then
  echo "slurm: up in $(elapsed "$T0") s (of which packages ${T_PKG} s); node $NODE_NAME idle," \
    "partitions debug (default) + high (preempts debug) + multi (this node only: no second node)," \
    "$GPU_COUNT fake GPUs; state dir $D"
  exit 0
fi
# By now the second slurmd has had as long to start as the first: if it is gone, say so at once.
sleep 0.2
daemon_pid slurmd-n2 >/dev/null ||
  fail "slurmd of node $NODE2_NAME did not start" "$D/log/slurmd-n2.out" "$D/log/slurmd-n2.log"
ready2() { [ "$(node_state "$NODE2_NAME")" = idle ]; }
wait_for 30 ready2 ||
  fail "node $NODE2_NAME not idle after 30 s (sinfo: '$(node_state "$NODE2_NAME")')" \
    "$D/log/slurmctld.log" "$D/log/slurmd-n2.out" "$D/log/slurmd-n2.log"

echo "slurm: up in $(elapsed "$T0") s (of which packages ${T_PKG} s); node $NODE_NAME idle," \
  "partitions debug (default) + high (preempts debug), $GPU_COUNT fake GPUs;" \
  "node $NODE2_NAME ($NODE2_ADDR, netns $NETNS, $GPU2_COUNT fake GPUs) idle, partition multi = both; state dir $D"
