#!/usr/bin/env bash
# Build the minimal Debian 12 image the libvirt cloud boots, offline from Debian packages (no cloud image is
# downloaded): debootstrap into a chroot, configure it, write it with mkfs.ext4 -d into a raw ext4 disk (no
# partition table, booted with a direct kernel boot), and copy the kernel and initrd out beside it.
#
#   deploy/images/build-debian.sh OUT_DIR [MIRROR]
#
# The result goes to OUT_DIR/debian-12-<hash>/ where <hash> is the first 12 hex digits of this script's sha256,
# so a changed script builds a new image and an unchanged one reuses the cached build (printed, not rebuilt).
# Files: disk.raw (sparse, 2 GiB apparent), vmlinuz, initrd.img, build.json (time, sizes, package versions).
# Needs root, debootstrap and e2fsprogs >= 1.43. docs/images.md says what is in the image and why.
set -euo pipefail

out_root=${1:?usage: build-debian.sh OUT_DIR [MIRROR]}
mirror=${2:-http://deb.debian.org/debian}
script_hash=$(sha256sum "$0" | cut -c1-12)
dest="$out_root/debian-12-$script_hash"

if [ -f "$dest/build.json" ]; then
  echo "$dest"  # cached: the same script built it
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "build-debian.sh: must run as root (debootstrap, chroot)" >&2; exit 2; }
command -v debootstrap >/dev/null || { echo "build-debian.sh: debootstrap is not installed" >&2; exit 2; }

started=$(date +%s)
mkdir -p "$out_root"
work=$(mktemp -d "$out_root/.build-XXXXXX")
root="$work/root"
cleanup() {
  for m in proc sys dev/pts dev; do umount -l "$root/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# cloud-init, python3 (the pilot), systemd as init, a kernel, DHCP through ifupdown; openssh-server for SSH
# contextualization; python3-cffi-backend, which the first hand-built image had to add in the chroot.
packages=cloud-init,python3,systemd-sysv,linux-image-amd64,ifupdown,isc-dhcp-client,python3-cffi-backend,openssh-server
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror"

# --- configuration -----------------------------------------------------------------------------------------
echo "/dev/vda / ext4 rw,errors=remount-ro 0 1" >"$root/etc/fstab"
echo cloudpilot-vm >"$root/etc/hostname"
# net.ifnames=0 on the kernel command line makes the one NIC eth0.
cat >"$root/etc/network/interfaces" <<'NET'
auto lo
iface lo inet loopback
auto eth0
iface eth0 inet dhcp
NET
# Only the NoCloud seed (cidata ISO) is looked for: probing other datasources costs minutes under TCG. The network
# is ours (above), so an image whose cloud-init is disabled still gets an address.
cat >"$root/etc/cloud/cloud.cfg.d/90-cloudpilot.cfg" <<'CFG'
datasource_list: [NoCloud, None]
network: {config: disabled}
CFG
# Host keys are made per VM at boot (cloud-init's ssh module does it when it runs; this unit when it does not).
rm -f "$root"/etc/ssh/ssh_host_*
cat >"$root/etc/systemd/system/cloudpilot-hostkeys.service" <<'UNIT'
[Unit]
Description=Generate missing SSH host keys
After=cloud-init.service
Before=ssh.service
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
RequiredBy=ssh.service
UNIT
ln -s /etc/systemd/system/cloudpilot-hostkeys.service "$root/etc/systemd/system/multi-user.target.wants/cloudpilot-hostkeys.service"
chroot "$root" passwd -l root >/dev/null
# Each VM gets its own machine id at first boot.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*.log
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' >"$work/packages.txt"

# --- disk, kernel, initrd ----------------------------------------------------------------------------------
for m in proc sys dev/pts dev; do umount -l "$root/$m" 2>/dev/null || true; done
mkdir -p "$work/out"
cp "$root"/boot/vmlinuz-* "$work/out/vmlinuz"
cp "$root"/boot/initrd.img-* "$work/out/initrd.img"
truncate -s 2G "$work/out/disk.raw"
mkfs.ext4 -q -L cloudpilot-root -d "$root" "$work/out/disk.raw"
chmod 0644 "$work/out"/*

finished=$(date +%s)
used_kib=$(du -k "$work/out/disk.raw" | cut -f1)
cat >"$work/out/build.json" <<JSON
{"script_sha256_12": "$script_hash", "suite": "bookworm", "mirror": "$mirror", "seconds": $((finished - started)),
 "disk_apparent_bytes": $(stat -c %s "$work/out/disk.raw"), "disk_used_bytes": $((used_kib * 1024)),
 "packages": $(wc -l <"$work/packages.txt"), "built_at": $finished}
JSON
cp "$work/packages.txt" "$work/out/packages.txt"
rm -rf "$dest"
mv "$work/out" "$dest"
chmod 0755 "$dest"
echo "$dest"
