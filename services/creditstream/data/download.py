"""Fetch the official UCI archive (data set 350), verify its content, cache the .xls."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from creditstream.data.dataset import DatasetError, content_sha256, load_dataset
from creditstream.redaction import redact

if TYPE_CHECKING:
    import pandas as pd

    from creditstream.settings import Settings

XLS_MEMBER: Final = "default of credit card clients.xls"
MANIFEST_NAME: Final = "uci_download.json"
# NOTE: what is pinned is the sha256 of the *normalised content* (dataset.normalised_csv: ID,
# 23 features, label; sorted by ID; integers; LF), not of the zip. The archive's own digest cannot
# be checked here (no internet) and would change with any re-zip by UCI, whereas the content
# digest is verifiable offline: the CSV mirror in ../shared/data normalises to exactly this value
# (tests/integration/test_download.py checks both, and that the .xls layout normalises alike).
PINNED_CONTENT_SHA256: Final = "f7b7d22d1f8dd27dadb25d4b78d8a4ae7c441ab6cc12d1ea58c0efc54d4d1788"
_CHUNK: Final = 1 << 20
_MAX_BYTES: Final = "CREDITSTREAM_DOWNLOAD_MAX_BYTES"
_MAX_EXTRACTED: Final = "CREDITSTREAM_DOWNLOAD_MAX_EXTRACTED_BYTES"


class DownloadError(RuntimeError):
    """The archive could not be fetched, is not the expected zip, or its content is wrong."""

    def __init__(self, message: str) -> None:
        # NOTE: a private mirror's URL may carry credentials; messages quote the URL.
        super().__init__(redact(message))


@dataclass(frozen=True)
class DownloadResult:
    """Where the verified .xls was cached, and the digests that were seen."""

    path: Path
    archive_sha256: str
    content_sha256: str
    rows: int


def cached_xls_path(cache_dir: Path) -> Path:
    """Where a verified download lives (present only after verification succeeded)."""
    return cache_dir / XLS_MEMBER


def _too_big(what: str, limit: int, setting: str) -> DownloadError:
    return DownloadError(
        f"{what} is larger than the {limit}-byte limit ({setting}); refused. The official "
        "archive is a few MB: this is not it (or raise the limit on purpose)."
    )


def _fetch(url: str, target: Path, timeout: float, max_bytes: int) -> str:
    """Stream `url` into `target`, at most `max_bytes` (announced or not); its sha256."""
    digest = hashlib.sha256()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, target.open("wb") as out:
            announced = response.headers.get("Content-Length")
            if announced is not None and announced.isdigit() and int(announced) > max_bytes:
                raise _too_big(f"{url} ({announced} bytes announced)", max_bytes, _MAX_BYTES)
            # NOTE: a missing or lying Content-Length is not trusted: count what arrives.
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                received += len(chunk)
                if received > max_bytes:
                    raise _too_big(url, max_bytes, _MAX_BYTES)
                digest.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        raise DownloadError(f"cannot download {url}: {exc}") from exc
    return digest.hexdigest()


def _extract_xls(archive: Path, target: Path, url: str, max_bytes: int) -> None:
    """Extract the .xls member, at most `max_bytes` of it (declared or actual): no zip bomb."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            members = [info for info in bundle.infolist() if info.filename.endswith(XLS_MEMBER)]
            if not members:
                raise DownloadError(
                    f"{url} holds no {XLS_MEMBER!r} (members: {', '.join(bundle.namelist())})"
                )
            member = members[0]
            what = f"{member.filename!r} in {url}"
            if member.file_size > max_bytes:
                raise _too_big(f"{what} ({member.file_size} bytes)", max_bytes, _MAX_EXTRACTED)
            written = 0
            with bundle.open(member) as source, target.open("wb") as out:
                for chunk in iter(lambda: source.read(_CHUNK), b""):
                    written += len(chunk)
                    if written > max_bytes:
                        raise _too_big(what, max_bytes, _MAX_EXTRACTED)
                    out.write(chunk)
    except zipfile.BadZipFile as exc:
        with archive.open("rb") as head:
            first = head.read(16)
        raise DownloadError(
            f"{url} is not a valid zip archive ({exc}); first bytes: {first!r}"
        ) from exc


def _checked_frame(
    path: Path, source: str, expected_content_sha256: str, *, expect_full: bool, detail: str = ""
) -> tuple[pd.DataFrame, str]:
    """The data set at `path` and its content digest, if it is valid and the expected one."""
    try:
        frame = load_dataset(path, expect_full=expect_full)
    except DatasetError as exc:
        raise DownloadError(f"{source} is invalid: {exc}") from exc
    digest = content_sha256(frame)
    if digest != expected_content_sha256:
        raise DownloadError(
            f"content digest mismatch for {source}: expected {expected_content_sha256}, got "
            f"{digest} ({detail}{len(frame)} rows); the download is corrupt or not the UCI "
            "data set 350"
        )
    return frame, digest


def verify_cached(path: Path, expected_content_sha256: str = PINNED_CONTENT_SHA256) -> None:
    """Check a cached .xls again before it is used: the cache is writable, so its mere
    presence proves nothing. Raises DownloadError when it is not the pinned data set."""
    _checked_frame(path, f"the cached {path}", expected_content_sha256, expect_full=True)


def download_uci(
    settings: Settings,
    *,
    expected_content_sha256: str = PINNED_CONTENT_SHA256,
    expect_full: bool = True,
    timeout: float = 60.0,
) -> DownloadResult:
    """Download, unzip, validate and digest-check the official archive into settings.cache_dir.

    Nothing is left in the cache unless every check passed.
    """
    url = settings.uci_archive_url
    cache_dir = settings.cache_dir
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".download-") as scratch:
        archive = Path(scratch) / "archive.zip"
        archive_digest = _fetch(url, archive, timeout, settings.download_max_bytes)
        extracted = Path(scratch) / XLS_MEMBER
        _extract_xls(archive, extracted, url, settings.download_max_extracted_bytes)
        frame, digest = _checked_frame(
            extracted,
            f"downloaded data from {url}",
            expected_content_sha256,
            expect_full=expect_full,
            detail=f"archive sha256 {archive_digest}, ",
        )
        target = cached_xls_path(cache_dir)
        os.replace(extracted, target)
    manifest = {
        "url": redact(url),
        "archive_sha256": archive_digest,
        "content_sha256": digest,
        "rows": len(frame),
        "downloaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (cache_dir / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return DownloadResult(target, archive_digest, digest, len(frame))
