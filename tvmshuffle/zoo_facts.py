"""The zoo's facts for `tvmshuffle models` (family, FLOPs at 224x224, parameters), counted once
per version of the code that defines and counts them, then read from the cache folder
(``cachedir``): a listing without importing PyTorch, in a fraction of a second instead of 8-12 s
(PyTorch's import, then 30 models built and counted on its meta device).

The key is a hash of ``models.py``, ``flops.py`` and PyTorch's version: a changed model, counter
or PyTorch never reads an old entry. Written whole (a temporary file renamed); an unreadable
entry is counted again."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from importlib import metadata
from pathlib import Path

from .cachedir import cache_root

log = logging.getLogger(__name__)

SIZE = (1, 3, 224, 224)


def _key() -> str:
    here = Path(__file__).resolve().parent
    digest = hashlib.sha256(f"{SIZE}|{metadata.version('torch')}".encode())
    for name in ("models.py", "flops.py"):
        digest.update((here / name).read_bytes())
    return digest.hexdigest()[:16]


def _count() -> list[dict]:
    """Counted from the layers' shapes (as `flops` counts the imported module: the same numbers,
    tests/test_models.py), no import through torch.export."""
    from . import flops
    from . import models as zoo

    rows = []
    for name in zoo.model_names():
        model = zoo.shape_only(name)
        rows.append({"name": name, "family": zoo.ZOO[name].family,
                     "mflops": round(flops.count_module(model, SIZE).mflops, 3),
                     "params": zoo.parameter_count(model)})
    return rows


def rows() -> list[dict]:
    """Every zoo model's facts, from the cache when it holds this code's."""
    path = cache_root() / "zoo" / f"{_key()}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    counted = _count()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False,
                                         suffix=".tmp") as f:
            json.dump(counted, f)
        os.replace(f.name, path)
    except OSError as err:  # a read-only cache: counted again next time
        log.info("zoo facts not cached: %s", err)
    return counted
