#!/bin/sh
# The boot script of an image with the pilot baked in (a cloud's context: none), installed as
# /opt/cloudpilot/boot.sh and started by cloudpilot-pilot.service, which powers the VM off when it exits (whatever
# its status: a refused or finished pilot leaves an idle VM, and an idle VM only costs money).
#
# It reads cloudpilot.env from the config drive the cloud attaches (an ISO labelled CLOUDPILOT; its format is
# src/cloudpilot/context/config_drive.py), refuses to run a baked pilot whose sha256 is not the one the server
# pins, writes the files the user-data would (the one-time token 0600) and runs the same pilot command as the
# user-data, which deletes the token file once read (--delete-token-file). Nothing here prints the token.
#
# For tests without a VM: CLOUDPILOT_DRIVE_DIR names a directory holding cloudpilot.env (no device is mounted),
# CLOUDPILOT_VM_ROOT prefixes every path the script writes or reads (as the local cloud does).
set -eu
umask 077

label=CLOUDPILOT
root=${CLOUDPILOT_VM_ROOT:-}
pilot="$root/opt/cloudpilot/pilot.pyz"
mnt=/run/cloudpilot-drive
wait_seconds=${CLOUDPILOT_DRIVE_WAIT_SECONDS:-120}

say() { echo "cloudpilot-boot: $*"; }
fail() { echo "cloudpilot-boot: $*" >&2; exit 1; }

drive=${CLOUDPILOT_DRIVE_DIR:-}
if [ -z "$drive" ]; then
  # udev names the CD-ROM by label once its driver is loaded, which under TCG can take a while after boot.
  waited=0
  dev=
  while [ -z "$dev" ]; do
    if [ -e "/dev/disk/by-label/$label" ]; then
      dev="/dev/disk/by-label/$label"
    elif dev=$(blkid -L "$label" 2>/dev/null); then
      :
    else
      dev=
      [ "$waited" -lt "$wait_seconds" ] || fail "no config drive labelled $label after ${wait_seconds} s: this VM was not started by a cloud with context: none"
      sleep 2
      waited=$((waited + 2))
    fi
  done
  mkdir -p "$mnt"
  mount -o ro "$dev" "$mnt" || fail "cannot mount the config drive $dev"
  drive=$mnt
fi

env_file="$drive/cloudpilot.env"
[ -f "$env_file" ] || fail "the config drive holds no cloudpilot.env"
# Assignments only, every value quoted by the server (context/config_drive.py).
. "$env_file"
if [ "$drive" = "$mnt" ]; then
  # Read: the drive is not needed any more, and unmounted it is not a path where a payload could look for the token.
  umount "$mnt" || true
fi
[ "${CLOUDPILOT_DRIVE_FORMAT:-}" = 1 ] || fail "config drive format ${CLOUDPILOT_DRIVE_FORMAT:-unknown} is not 1: this image is older than the server"

# The baked pilot must be the one the server pins, as the user-data path checks its download: a stale image would
# otherwise run a pilot the server no longer speaks to, or one nobody reviewed. The token is not written then.
[ -f "$pilot" ] || fail "refusing to start: $pilot is missing from this image"
actual=$(sha256sum "$pilot" | cut -d' ' -f1)
if [ "$actual" != "$CLOUDPILOT_PILOT_SHA256" ]; then
  fail "refusing to run the baked pilot: its sha256 is $actual, the server pins $CLOUDPILOT_PILOT_SHA256 (rebuild the image with deploy/images/golden-baked.sh from the server's cloudpilot version)"
fi

i=1
while [ "$i" -le "$CLOUDPILOT_FILE_COUNT" ]; do
  eval "path=\$CLOUDPILOT_FILE_${i}_PATH mode=\$CLOUDPILOT_FILE_${i}_MODE content=\$CLOUDPILOT_FILE_${i}_CONTENT"
  mkdir -p "$root$(dirname "$path")"
  printf '%s' "$content" >"$root$path"
  chmod "$mode" "$root$path"
  i=$((i + 1))
done
unset content
mkdir -p "$root/var/lib/cloudpilot"

if [ -z "$root" ] && ! id -u "$CLOUDPILOT_PAYLOAD_USER" >/dev/null 2>&1; then
  useradd --system --no-create-home --shell /usr/sbin/nologin "$CLOUDPILOT_PAYLOAD_USER"
fi

# The MJF locations (MACHINEFEATURES, JOBFEATURES) for the pilot and its payloads, when the drive carries them.
if [ -f "$root/etc/cloudpilot/env" ]; then
  set -a
  . "$root/etc/cloudpilot/env"
  set +a
fi
export CLOUDPILOT_PAYLOAD_USER
[ -z "$root" ] || export CLOUDPILOT_VM_ROOT
say "starting the baked pilot (sha256 $actual) for VM $CLOUDPILOT_VM_ID of $CLOUDPILOT_VO, server $CLOUDPILOT_SERVER_URL"
command=$CLOUDPILOT_PILOT_COMMAND
unset CLOUDPILOT_PILOT_COMMAND
i=1
while [ "$i" -le "$CLOUDPILOT_FILE_COUNT" ]; do
  unset "CLOUDPILOT_FILE_${i}_CONTENT"
  i=$((i + 1))
done
set +e
sh -c "$command"
status=$?
say "the pilot exited with status $status"
exit "$status"
