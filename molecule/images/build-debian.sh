#!/bin/sh
# Build the local Debian 12 systemd test image for the Molecule scenarios
# (for machines that cannot pull the Fedora image). An existing image is kept;
# pass --force to rebuild it.
set -eu

IMAGE="${REDFLAG_DEBIAN_IMAGE:-localhost/redflag-debian12-systemd:latest}"
SUITE=bookworm
# procps: ps/pgrep for the tests; everything else is what Ansible and the agent need.
PACKAGES=systemd,systemd-sysv,python3,dbus,procps

here=$(cd "$(dirname "$0")" && pwd)
: "${CONTAINERS_CONF:=$here/../containers.conf}"
export CONTAINERS_CONF

force=0
[ "${1:-}" = "--force" ] && force=1

die() { echo "build-debian: $*" >&2; exit 1; }

command -v podman >/dev/null 2>&1 || die "podman not found; install it: apt-get install podman"

if [ "$force" -eq 0 ] && podman image exists "$IMAGE"; then
    echo "build-debian: $IMAGE already exists; not rebuilding (use --force to rebuild)"
    exit 0
fi

command -v debootstrap >/dev/null 2>&1 || die "debootstrap not found; install it: apt-get install debootstrap"
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root; run this script as root"

work=$(mktemp -d "${TMPDIR:-/tmp}/redflag-debian-image.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT INT TERM
root="$work/rootfs"

echo "build-debian: debootstrap $SUITE into $root (about 40 s)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    die "debootstrap failed (log above); check that the Debian package mirror is reachable, then rerun"
}

echo "build-debian: trimming the root file system"
# An empty machine-id makes systemd generate a fresh one per container.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"* \
    "$root/usr/share/doc/"* "$root/usr/share/man/"* "$root/usr/share/locale/"*
# Units that only slow down or fail a container boot.
for unit in getty.target console-getty.service systemd-udevd.service \
    systemd-udev-trigger.service systemd-timesyncd.service \
    apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer; do
    ln -sf /dev/null "$root/etc/systemd/system/$unit"
done

echo "build-debian: importing as $IMAGE"
tar -C "$root" -c . | podman import \
    --change 'CMD ["/sbin/init"]' \
    --change 'STOPSIGNAL SIGRTMIN+3' \
    --change 'ENV container=podman' \
    - "$IMAGE" >/dev/null || die "podman import failed; check 'podman info' works with CONTAINERS_CONF=$CONTAINERS_CONF"

echo "build-debian: done: $IMAGE"
