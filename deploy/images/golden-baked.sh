#!/usr/bin/env bash
# Turn a raw ext4 image of build-debian.sh into an ad-hoc image with the pilot baked in, for a libvirt cloud with
# context: none, offline and without mounting it (debugfs): cloud-init disabled, /opt/cloudpilot/pilot.pyz built
# from the installed cloudpilot package with the server's reproducible build (context/pilot_zipapp.py), the boot
# script and the unit of deploy/images/baked/ (it reads the config drive, checks the pilot's sha256 against the
# server's pin, starts it and powers the VM off when it exits).
#
#   deploy/images/golden-baked.sh IMAGE.raw [PYTHON]
#
# PYTHON (default python3) is an interpreter with the server's cloudpilot installed: a VM refuses to run a baked
# pilot whose sha256 differs from the one its server pins, so rebuild the image when the server's version changes.
# Prints the baked pilot's sha256.
# Works on a copy: cp --sparse=always debian-12-*/disk.raw baked.raw first.
set -euo pipefail
image=${1:?usage: golden-baked.sh IMAGE.raw [PYTHON]}
python=${2:-python3}
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$python" - "$tmp/pilot.pyz" <<'PY'
import sys
from pathlib import Path

from cloudpilot.context.pilot_zipapp import build_pilot_zipapp

Path(sys.argv[1]).write_bytes(build_pilot_zipapp().content)
PY
install -m 0755 "$here/baked/boot.sh" "$tmp/boot.sh"
install -m 0644 "$here/baked/cloudpilot-pilot.service" "$tmp/cloudpilot-pilot.service"
: >"$tmp/empty"
unit=/etc/systemd/system/cloudpilot-pilot.service
debugfs -w -f - "$image" >/dev/null <<CMDS
mkdir /opt/cloudpilot
write $tmp/pilot.pyz /opt/cloudpilot/pilot.pyz
set_inode_field /opt/cloudpilot/pilot.pyz mode 0100644
write $tmp/boot.sh /opt/cloudpilot/boot.sh
set_inode_field /opt/cloudpilot/boot.sh mode 0100755
write $tmp/cloudpilot-pilot.service $unit
set_inode_field $unit mode 0100644
symlink /etc/systemd/system/multi-user.target.wants/cloudpilot-pilot.service $unit
write $tmp/empty /etc/cloud/cloud-init.disabled
CMDS
# debugfs reports most errors without failing: check that the pilot is there, byte for byte.
debugfs -R "cat /opt/cloudpilot/pilot.pyz" "$image" 2>/dev/null | cmp -s - "$tmp/pilot.pyz" \
  || { echo "golden-baked.sh: writing the pilot into $image failed" >&2; exit 1; }
debugfs -R "stat $unit" "$image" 2>/dev/null | grep -q "Type: regular" \
  || { echo "golden-baked.sh: writing the unit into $image failed" >&2; exit 1; }
sha256sum "$tmp/pilot.pyz" | cut -d' ' -f1
