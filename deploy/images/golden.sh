#!/usr/bin/env bash
# Turn a raw ext4 image of build-debian.sh into a "golden" image for SSH contextualization (context: ssh), offline
# and without mounting it (debugfs): cloud-init disabled, and the provisioner's public key authorized for root.
#
#   deploy/images/golden.sh IMAGE.raw KEY.pub
#
# Works on a copy: cp --sparse=always debian-12-*/disk.raw golden.raw first.
set -euo pipefail
image=${1:?usage: golden.sh IMAGE.raw KEY.pub}
key=${2:?usage: golden.sh IMAGE.raw KEY.pub}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
install -m 0600 "$key" "$tmp/authorized_keys"
: >"$tmp/empty"
debugfs -w -f - "$image" >/dev/null <<CMDS
mkdir /root/.ssh
set_inode_field /root/.ssh mode 040700
write $tmp/authorized_keys /root/.ssh/authorized_keys
set_inode_field /root/.ssh/authorized_keys mode 0100600
set_inode_field /root/.ssh/authorized_keys uid 0
set_inode_field /root/.ssh/authorized_keys gid 0
write $tmp/empty /etc/cloud/cloud-init.disabled
CMDS
# debugfs reports most errors without failing: check that the key is there.
debugfs -R "cat /root/.ssh/authorized_keys" "$image" 2>/dev/null | grep -qF "$(cut -d' ' -f2 "$key")"
