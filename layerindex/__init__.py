"""layerindex: which layer of which container image holds a file, without pulling images."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    # Looked up on first use: reading the installed metadata costs ~20 ms of every start-up.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("layerindex")
        except PackageNotFoundError:  # running from a source tree that was never installed
            return "0+unknown"
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
