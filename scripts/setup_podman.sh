#!/usr/bin/env bash
# Install podman/buildah/runc/debootstrap (Debian packages) and write the containers.conf that
# makes podman 4.3 work on these machines, idempotently. Run as root (.ci/run does).
#
# NOTE: why each setting (checked on this kind of machine, see docs/images.md):
# - runtime runc: crun refuses the host's hybrid cgroup v1 layout ("cgroups in hybrid mode");
# - cgroup_manager cgroupfs: there is no systemd to delegate cgroups to;
# - default_ulimits lowered to 4096: podman's default raises nofile/nproc above the sandbox's
#   hard limits and the runtime refuses to raise an rlimit (lowering is allowed);
# - events_logger file: no journald here.
set -euo pipefail

conf=/etc/containers/containers.conf
packages=(podman buildah runc debootstrap)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [[ ! -f "$conf" ]]; then
  echo "writing $conf"
  mkdir -p "$(dirname "$conf")"
  cat >"$conf" <<'CONF'
# Written by creditstream scripts/setup_podman.sh (runc, cgroupfs, lowered ulimits: see there).
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"
CONF
fi
podman --version
