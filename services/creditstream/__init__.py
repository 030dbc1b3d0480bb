"""creditstream: queue-driven credit-card default risk scoring."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("creditstream")
except PackageNotFoundError:  # NOTE: running from a source tree without an install
    __version__ = "0.0.0+local"
