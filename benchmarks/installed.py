"""The environment the benchmarks run ``layerindex`` commands in: as ``pip install`` leaves it."""

from __future__ import annotations

import os
from pathlib import Path


def cli_env(cache: Path) -> dict[str, str]:
    """``os.environ`` for ``python -m layerindex`` subprocesses, with bytecode cached in ``cache``.

    ``pip install`` compiles every module it installs. An editable install on a machine that
    sets PYTHONDONTWRITEBYTECODE (this one does, and CI's) compiles layerindex's modules from
    source at every start instead: ~70 ms a command that no user pays. The cache is a directory
    of the benchmark's (PYTHONPYCACHEPREFIX), not the source tree; the first run fills it, so
    time a command only after running it once.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(cache)
    return env
