"""layerindex: which layer of which container image holds a file, without pulling images."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("layerindex")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
