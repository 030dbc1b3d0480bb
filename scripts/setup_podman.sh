#!/usr/bin/env bash
# Install podman/buildah/runc/debootstrap (Debian packages) and write the containers.conf.d
# drop-in that makes podman 4.3 work on these machines, idempotently; then check that podman
# uses it. Run as root (.ci/run does).
#
# NOTE: why each setting (checked on this kind of machine, see docs/images.md):
# - runtime runc: crun refuses the host's hybrid cgroup v1 layout ("cgroups in hybrid mode");
# - cgroup_manager cgroupfs: there is no systemd to delegate cgroups to;
# - default_ulimits lowered to 4096: podman's default raises nofile/nproc above the sandbox's
#   hard limits and the runtime refuses to raise an rlimit (lowering is allowed);
# - events_logger file: no journald here.
set -euo pipefail

# NOTE: a drop-in, read after /etc/containers/containers.conf and overriding it: an
# administrator's containers.conf (another runtime, systemd cgroups) is left as it is and
# cannot undo these settings; rewritten each run, so it never goes stale.
conf=/etc/containers/containers.conf.d/50-creditstream.conf
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

wanted='# Written by creditstream scripts/setup_podman.sh (runc, cgroupfs, lowered ulimits: see there).
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
events_logger = "file"'
if [[ "$(cat "$conf" 2>/dev/null)" != "$wanted" ]]; then
  echo "writing $conf"
  mkdir -p "$(dirname "$conf")"
  printf '%s\n' "$wanted" >"$conf"
fi
podman --version
# NOTE: fail here, with podman's reason, rather than in the image tests much later.
runtime=$(podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}')
if [[ "$runtime" != "runc cgroupfs" ]]; then
  echo "podman runs on '$runtime', not 'runc cgroupfs': see $conf" >&2
  exit 1
fi
