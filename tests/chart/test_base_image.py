"""The local base image is rebuilt when its recipe changes, never reused stale.

`build_base` used to skip whenever an image of that name existed, so a changed package list, a
new trim, a changed `python` link or a new CA bundle on the machine (a TLS proxy) never reached
the images built on top. The base now carries the digest of its recipe as a label; an image
without it, or with another, is rebuilt.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import images
import pytest

pytestmark = [pytest.mark.chart, pytest.mark.images, pytest.mark.timeout(300)]


@pytest.fixture
def engine() -> str:
    try:
        return images.detect_engine()
    except images.EngineError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(str(exc))
        pytest.skip(str(exc))


@pytest.fixture
def probe(engine: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(image ref, a tiny rootfs tar to import as it): removed afterwards."""
    (tmp_path / "rootfs").mkdir()
    (tmp_path / "rootfs" / "marker").write_text("probe\n")
    archive = tmp_path / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(tmp_path / "rootfs", arcname=".")
    ref = f"localhost/creditstream-base-probe:{uuid.uuid4().hex[:8]}"
    yield ref, archive
    subprocess.run([engine, "rmi", "--force", ref], capture_output=True, timeout=120)


def _import(engine: str, archive: Path, ref: str, label: str | None) -> None:
    change = [] if label is None else ["--change", f"LABEL {images.BASE_RECIPE_LABEL}={label}"]
    subprocess.run(
        [engine, "import", *change, str(archive), ref], check=True, capture_output=True, timeout=120
    )


def test_the_recipe_digest_follows_the_ca_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.crt"
    bundle.write_text("one\n")
    first = images.base_recipe(bundle)
    assert images.base_recipe(bundle) == first
    bundle.write_text("two\n")
    assert images.base_recipe(bundle) != first


@pytest.mark.parametrize("label", [None, "0" * 16], ids=["no-label", "other-recipe"])
def test_a_stale_base_is_rebuilt_not_reused(
    engine: str,
    probe: tuple[str, Path],
    label: str | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ref, archive = probe
    _import(engine, archive, ref, label)
    assert not images.base_is_current(engine, ref)
    # NOTE: without debootstrap a rebuild stops at once; reuse would have returned the ref.
    monkeypatch.setattr(images.shutil, "which", lambda _name: None)
    with pytest.raises(SystemExit, match="debootstrap"):
        images.build_base(engine, image=ref)


def test_a_current_base_is_reused(engine: str, probe: tuple[str, Path]) -> None:
    ref, archive = probe
    _import(engine, archive, ref, images.base_recipe())
    assert images.base_is_current(engine, ref)
    assert images.build_base(engine, image=ref) == ref


def test_an_absent_base_is_not_current(engine: str) -> None:
    assert not images.base_is_current(engine, f"localhost/creditstream-absent:{uuid.uuid4().hex}")
