#!/usr/bin/env bash
# apptainer-setup.sh: a working `apptainer` on a Debian 12 machine that has none.
#
# Apptainer is in Debian sid only, and sid's binaries need glibc 2.38 (bookworm has 2.36); building it
# needs a Go toolchain and modules we cannot fetch. So: debootstrap a private sid rootfs, install sid's
# apptainer there, and install a wrapper as /usr/local/bin/apptainer that runs it inside that rootfs
# (unshare -m + pivot_root), with every host folder named on its command line bound at the same path.
# `apptainer exec --bind A:A IMAGE cmd` and `apptainer build X.sif DIR|docker-archive://T` then behave
# as on a cluster. Sid apt sources exist only inside the rootfs, never on the host.
# Idempotent: the second run only checks.
# shellcheck source=containers/runtimes/common.sh
source "$(dirname "$0")/common.sh"
need_root

DIR="$LAUNCHER_CONTAINERS_STATE/apptainer"
ROOTFS="$DIR/rootfs"
WRAPPER="${APPTAINER_WRAPPER:-/usr/local/bin/apptainer}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
MARK="$ROOTFS/.launcher-apptainer-ready"

existing=$(command -v apptainer || true)
if [[ -n $existing && $existing != "$WRAPPER" ]]; then
    done_msg "a real apptainer is already installed ($existing): nothing to do"
    exit 0
fi

if [[ ! -f $MARK ]]; then
    apt_install debootstrap util-linux
    if [[ ! -x $ROOTFS/usr/bin/apt-get ]]; then
        rm -rf "$ROOTFS"
        mkdir -p "$DIR"
        log "debootstrap sid into $ROOTFS (about 30 s)"
        debootstrap --variant=minbase sid "$ROOTFS.partial" "$MIRROR" > "$DIR/debootstrap.log" 2>&1 \
            || die "debootstrap failed; last lines of $DIR/debootstrap.log:
$(tail -n 15 "$DIR/debootstrap.log")" "check that $MIRROR is reachable, then rerun $0"
        mv "$ROOTFS.partial" "$ROOTFS"
    fi
    log "installing sid's apptainer inside the rootfs"
    # The mirror's sid Release file may look expired when this machine's clock runs ahead of it.
    apt_opts=(-o Acquire::Check-Valid-Until=false -q)
    chroot "$ROOTFS" apt-get "${apt_opts[@]}" update > "$DIR/apt.log" 2>&1 \
        || die "apt-get update in the sid rootfs failed; see $DIR/apt.log" "rerun $0"
    # squashfs-tools: apptainer build packs SIFs with mksquashfs.
    chroot "$ROOTFS" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y --no-install-recommends \
        apptainer squashfs-tools ca-certificates >> "$DIR/apt.log" 2>&1 \
        || die "apt-get install apptainer in the sid rootfs failed; see $DIR/apt.log" "rerun $0"
    chroot "$ROOTFS" apt-get clean
    # Root here lacks CAP_SYS_RESOURCE, and apptainer as root asks for every capability by default
    # ("Requesting capability set ... while permitted capability set is ..."). Grant root every capability
    # but that one, through the capability file ("full" would ask for all; "no" would give none).
    sed -i 's/^root default capabilities = .*/root default capabilities = file/' \
        "$ROOTFS/etc/apptainer/apptainer.conf"
    caps=$(chroot "$ROOTFS" apptainer capability avail 2>/dev/null | grep -o '^CAP_[A-Z_]*' | grep -vx CAP_SYS_RESOURCE | paste -sd,)
    chroot "$ROOTFS" apptainer capability add --user root "$caps" > /dev/null 2>&1
    mkdir -p "$ROOTFS/.oldroot"
    chroot "$ROOTFS" apptainer --version > "$MARK" 2>/dev/null
fi

cat > "$WRAPPER.tmp" <<WRAP
#!/usr/bin/env bash
# apptainer wrapper written by containers/runtimes/apptainer-setup.sh: runs Debian sid's apptainer from
# $ROOTFS in a private mount namespace. Host folders named in the arguments (and \$PWD, \$HOME, \$TMPDIR)
# are bound into that rootfs at the same path, so binds and image paths mean what they mean on the host.
set -euo pipefail
ROOTFS=$(printf %q "$ROOTFS")
WRAP
cat >> "$WRAPPER.tmp" <<'WRAP'
if [[ -z ${_LAUNCHER_APPTAINER_NS:-} ]]; then
    export _LAUNCHER_APPTAINER_NS=1
    exec unshare -m --propagation private "$0" "$@"
fi
unset _LAUNCHER_APPTAINER_NS

host_paths=("$PWD")
[[ -n ${HOME:-} ]] && host_paths+=("$HOME")
[[ -n ${TMPDIR:-} ]] && host_paths+=("$TMPDIR")
for arg in "$@"; do
    # "--bind A:B:ro,C", "docker-archive:///x.tar", "--opt=/p": every absolute piece may be a host path.
    IFS=',:=' read -ra pieces <<< "$arg"
    for piece in "${pieces[@]}"; do [[ $piece == /* ]] && host_paths+=("$piece"); done
done

keep=()
for p in "${host_paths[@]}"; do
    p=$(realpath -m "$p")
    while [[ ! -e $p && $p != / ]]; do p=$(dirname "$p"); done   # an output file that is not there yet
    [[ -f $p ]] && p=$(dirname "$p")
    case $p in
        # System folders come from the sid rootfs itself; binding the host's would break it.
        / | /usr | /usr/* | /etc | /etc/* | /bin | /bin/* | /sbin | /sbin/* | /lib* | /proc | /proc/* | /sys | /sys/* \
          | /dev | /dev/* | /run | /run/* | /boot | /boot/* | /var | /var/lib | /var/lib/* | /var/cache | /var/cache/*) continue ;;
    esac
    keep+=("$p")
done

mount --bind "$ROOTFS" "$ROOTFS"          # pivot_root and apptainer's propagation change need a mount point
mount -t proc proc "$ROOTFS/proc"
mount --rbind /sys "$ROOTFS/sys"
mount --rbind /dev "$ROOTFS/dev"
for f in /etc/hosts /etc/resolv.conf /etc/passwd /etc/group; do
    [[ -f $f ]] || continue
    [[ -e $ROOTFS$f ]] || touch "$ROOTFS$f"
    mount --bind "$f" "$ROOTFS$f"
done
bound=()
while IFS= read -r p; do
    [[ -z $p ]] && continue
    for b in "${bound[@]}"; do [[ $p == "$b" || $p == "$b"/* ]] && continue 2; done
    mkdir -p "$ROOTFS$p"
    mount --rbind "$p" "$ROOTFS$p"
    bound+=("$p")
done < <(printf '%s\n' "${keep[@]}" | sort -u)

cwd=$PWD
cd "$ROOTFS"
pivot_root . .oldroot                       # chroot is refused by apptainer ("weak chrooted environment")
umount -l /.oldroot
cd "$cwd" 2>/dev/null || cd /
exec /usr/bin/apptainer "$@"
WRAP
chmod 755 "$WRAPPER.tmp"
mv "$WRAPPER.tmp" "$WRAPPER"
"$WRAPPER" --version > /dev/null || die "$WRAPPER --version failed" "rm -rf $ROOTFS and rerun $0"
done_msg "$(cat "$MARK") ready: $WRAPPER -> $ROOTFS ($(du -sh "$ROOTFS" 2>/dev/null | cut -f1))"
