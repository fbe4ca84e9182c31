#!/usr/bin/env bash
# Bring up a real single-node Slurm cluster on this machine (root, no systemd needed):
# munged, MariaDB + slurmdbd (accounting: submitit reads job states with sacct), slurmctld, slurmd.
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

# ---------------------------------------------------------------- config files (as strings)
SLURM_CONF="# Written by launcher slurm/up.sh: a single-node test cluster. Edits are overwritten.
ClusterName=$CLUSTER_NAME
SlurmctldHost=$NODE_NAME(127.0.0.1)
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
NodeName=$NODE_NAME NodeAddr=127.0.0.1 CPUs=8 Sockets=1 CoresPerSocket=8 ThreadsPerCore=1 RealMemory=16000 Gres=gpu:$GPU_COUNT State=UNKNOWN
PartitionName=debug Nodes=$NODE_NAME Default=YES PriorityTier=1 GraceTime=10 MaxTime=INFINITE State=UP
PartitionName=high Nodes=$NODE_NAME PriorityTier=10 GraceTime=10 MaxTime=INFINITE State=UP
"

# Fake GPUs: character devices (plain files are rejected by slurmd) named like NVIDIA's.
GRES_CONF="# Written by launcher slurm/up.sh: fake GPUs (character devices, not real hardware).
AutoDetect=off
NodeName=$NODE_NAME Name=gpu File=$D/gpu/nvidia[0-$((GPU_COUNT - 1))]
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

# ---------------------------------------------------------------- fast path: already up?
all_up=1
for d in "${DAEMONS[@]}"; do
  daemon_pid "$d" >/dev/null || { all_up=0; break; }
done
if [ $all_up = 1 ] &&
  same_file /etc/slurm/slurm.conf "$SLURM_CONF" &&
  same_file /etc/slurm/gres.conf "$GRES_CONF" &&
  same_file /etc/slurm/slurmdbd.conf "$SLURMDBD_CONF" &&
  same_file "$D/mysql.cnf" "$MYSQL_CNF"; then
  # Jobs may be running: any answering, usable node state counts as up.
  state=$(node_state)
  case "$state" in
    idle | mixed | allocated | completing)
      echo "slurm: already up (node $NODE_NAME $state, state dir $D), checked in $(elapsed "$T0") s"
      exit 0
      ;;
  esac
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "up.sh: must run as root" >&2
  exit 1
fi

# Partly up, or up with another config: restart everything from scratch.
for d in "${DAEMONS[@]}"; do
  if daemon_pid "$d" >/dev/null; then
    echo "slurm: restarting (not all daemons up, node not usable, or config changed)"
    "$HERE/down.sh"
    break
  fi
done

# A controller we have no pid file for (e.g. started with another LAUNCHER_SLURM_DIR) would hold
# the ports: say so instead of failing later with obscure errors.
if [ -f /etc/slurm/slurm.conf ] && timeout 5 scontrol ping >/dev/null 2>&1; then
  echo "up.sh: ERROR: a slurmctld not started from $D is running; stop it with" \
    "LAUNCHER_SLURM_DIR=<its dir> $HERE/down.sh" >&2
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
rm -rf "$D/spool/slurmctld" "$D/spool/slurmd"
mkdir -p "$D/spool/slurmctld" "$D/spool/slurmd"
: >"$D/log/slurmctld.log"
: >"$D/log/slurmd.log"
: >"$D/log/slurmdbd.log"

for i in $(seq 0 $((GPU_COUNT - 1))); do
  [ -c "$D/gpu/nvidia$i" ] || { rm -f "$D/gpu/nvidia$i"; mknod -m 0666 "$D/gpu/nvidia$i" c 195 "$i"; }
done

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

echo "slurm: up in $(elapsed "$T0") s (of which packages ${T_PKG} s); node $NODE_NAME idle," \
  "partitions debug (default) + high (preempts debug), $GPU_COUNT fake GPUs, state dir $D"
