"""Resolve where the UCI data comes from: the given path, the cached download, or a download."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from creditstream.data.download import DownloadError, cached_xls_path, verify_cached

if TYPE_CHECKING:
    from creditstream.settings import Settings


class DataSourceError(FileNotFoundError):
    """No data set is available and downloading was not allowed (or failed)."""


def resolve_data_path(settings: Settings, *, allow_download: bool = False) -> Path:
    """settings.data_path if it exists; else the cached download, verified again; else download
    (when allowed) or fail."""
    if settings.data_path.is_file():
        return settings.data_path
    cached = cached_xls_path(settings.cache_dir)
    if cached.is_file():
        try:
            verify_cached(cached)
        except DownloadError as exc:
            if not allow_download:
                raise DataSourceError(
                    f"the cached download fails verification ({exc}); run `creditstream "
                    "download` again"
                ) from exc
            cached.unlink()  # NOTE: not the data set: replaced by a fresh, verified download
        else:
            return cached
    if allow_download:
        from creditstream.data.download import download_uci

        try:
            return download_uci(settings).path
        except DownloadError as exc:
            raise DataSourceError(
                f"no data set at {settings.data_path} and the download failed: {exc}"
            ) from exc
    raise DataSourceError(
        f"no data set: {settings.data_path} does not exist and there is no verified download in "
        f"{settings.cache_dir}; run `creditstream download` or set CREDITSTREAM_DATA_PATH"
    )
