"""scripts/setup_podman.sh leaves podman working whatever /etc/containers already holds.

Each case runs the real script and the real `podman info` in a mount namespace of its own, with
a folder of the test's bind-mounted over /etc/containers: the machine's own configuration is
never touched (other engineers build images on it at the same time).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

pytestmark = [pytest.mark.chart, pytest.mark.images, pytest.mark.timeout(300)]

SETUP = REPO_ROOT / "scripts" / "setup_podman.sh"
# NOTE: what podman must end up with here (see the script): runc on cgroupfs, rlimits lowered
# to what the sandbox allows (podman's defaults raise them, and raising is refused).
EXPECTED = "runc cgroupfs"
RLIMITS = "import resource as r; print(r.getrlimit(r.RLIMIT_NOFILE), r.getrlimit(r.RLIMIT_NPROC))"

CONFS = [
    pytest.param(None, id="no-containers-conf"),
    pytest.param(
        '[engine]\nruntime = "crun"\ncgroup_manager = "systemd"\n', id="another-containers-conf"
    ),
    pytest.param("# an administrator's empty file\n", id="empty-containers-conf"),
]


def _in_own_etc_containers(etc: Path, command: str) -> subprocess.CompletedProcess[str]:
    script = f"mount --bind {etc} /etc/containers && {command}"
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("conf", CONFS)
def test_setup_podman_leaves_podman_able_to_run_containers(
    conf: str | None, built_images: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    engine, refs = built_images
    if Path(engine).name != "podman":
        pytest.skip(f"the images were built with {engine}; this is about podman")
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare (the script itself runs as root in .ci/run)")
    etc = tmp_path / "etc-containers"
    etc.mkdir()
    if conf is not None:
        (etc / "containers.conf").write_text(conf)
    setup = _in_own_etc_containers(etc, str(SETUP))
    assert setup.returncode == 0, setup.stdout + setup.stderr
    info = _in_own_etc_containers(
        etc, "podman info --format '{{.Host.OCIRuntime.Name}} {{.Host.CgroupManager}}'"
    )
    assert info.returncode == 0, info.stdout + info.stderr
    assert info.stdout.strip() == EXPECTED
    run = _in_own_etc_containers(
        etc,
        f"podman run --rm --network none --entrypoint python {refs['consumer']} -c '{RLIMITS}'",
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip() == "(4096, 4096) (4096, 4096)"
    if conf is not None:
        assert (etc / "containers.conf").read_text() == conf, "the administrator's file changed"
