"""Resolve where the UCI data comes from: the given path, the cached download, or a download."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from creditstream.data.download import cached_xls_path

if TYPE_CHECKING:
    from creditstream.settings import Settings


class DataSourceError(FileNotFoundError):
    """No data set is available and downloading was not allowed (or failed)."""


def resolve_data_path(settings: Settings, *, allow_download: bool = False) -> Path:
    """settings.data_path if it exists; else the verified cached download; else download or fail."""
    if settings.data_path.is_file():
        return settings.data_path
    cached = cached_xls_path(settings.cache_dir)
    if cached.is_file():
        return cached
    if allow_download:
        from creditstream.data.download import DownloadError, download_uci

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
