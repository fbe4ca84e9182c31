#!/usr/bin/env bash
# podman-setup.sh: install rootful podman and write a containers.conf that works on this kind of host.
# Idempotent; the second run only checks.   then: source /var/tmp/launcher-containers/env.sh
#
# Why the conf (measured on the CI machine, see shared/notes/containers-local.md):
# - CAP_SYS_RESOURCE is missing and the nofile hard limit is 20000, so the OCI runtime cannot raise
#   RLIMIT_NOFILE/RLIMIT_NPROC to podman's defaults: pin both ulimits at values we are allowed to set.
# - cgroups are v1 "hybrid" (cgroup2 holds only hugetlb) and crun refuses that; runc accepts it.
# Storage stays in a private graphroot so tests never touch /var/lib/containers. A non-root user runs podman
# rootless, with a store of their own under $DIR/users/<uid> (test-image/build.sh fills it for container_users).
# - rootless `--ipc host` bind-mounts the host's /dev/mqueue; with no systemd here nothing mounts it.
# shellcheck source=containers/runtimes/common.sh
source "$(dirname "$0")/common.sh"
need_root

DIR="$LAUNCHER_CONTAINERS_STATE/podman"
CONF="$DIR/containers.conf"
STORAGE_CONF="$DIR/storage.conf"

# catatonit: the init behind `podman run --init` (signals reach python, zombies are reaped).
apt_install podman runc uidmap fuse-overlayfs slirp4netns catatonit containernetworking-plugins iptables

mkdir -p "$DIR/storage" "$DIR/run" "$DIR/users"
chmod 1777 "$DIR/users"   # like /tmp: every user may make their own store, nobody may touch another's
if ! mountpoint -q /dev/mqueue; then
    mkdir -p /dev/mqueue && mount -t mqueue mqueue /dev/mqueue
fi
nofile_hard=$(ulimit -Hn)
[[ $nofile_hard == unlimited ]] && nofile_hard=1048576
cat > "$CONF.tmp" <<CONF
# Written by containers/runtimes/podman-setup.sh; selected with CONTAINERS_CONF=$CONF
[containers]
default_ulimits = ["nofile=$nofile_hard:$nofile_hard", "nproc=32768:32768"]
init_path = "/usr/bin/catatonit"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
mv "$CONF.tmp" "$CONF"
cat > "$STORAGE_CONF.tmp" <<CONF
# Written by containers/runtimes/podman-setup.sh; selected with CONTAINERS_STORAGE_CONF=$STORAGE_CONF
[storage]
driver = "overlay"
graphroot = "$DIR/storage"
runroot = "$DIR/run"
# Rootless podman (any non-root user) expands \$UID itself.
rootless_storage_path = "$DIR/users/\$UID/storage"
CONF
mv "$STORAGE_CONF.tmp" "$STORAGE_CONF"

export CONTAINERS_CONF=$CONF CONTAINERS_STORAGE_CONF=$STORAGE_CONF
podman info --format '{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}' > "$DIR/info.txt" 2>&1 \
    || die "podman info failed: $(cat "$DIR/info.txt")" "read $DIR/info.txt"
env_file_set CONTAINERS_CONF "$CONF"
env_file_set CONTAINERS_STORAGE_CONF "$STORAGE_CONF"
done_msg "podman $(podman version --format '{{.Client.Version}}') ready ($(cat "$DIR/info.txt"))"
echo "export CONTAINERS_CONF=$CONF CONTAINERS_STORAGE_CONF=$STORAGE_CONF"
