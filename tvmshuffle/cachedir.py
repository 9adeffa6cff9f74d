"""The user's cache folder for tvmshuffle (``$TVMSHUFFLE_CACHE_DIR``, else the platform's:
``~/.cache/tvmshuffle`` on Linux): what is derived once and remembered (default schedules, the
zoo's facts). Everything in it can be deleted. Imports nothing heavy."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TVMSHUFFLE_CACHE_DIR"


def cache_root() -> Path:
    """The user's cache folder for tvmshuffle."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    import platformdirs

    return Path(platformdirs.user_cache_dir("tvmshuffle", appauthor=False))
