"""tvmshuffle: ShuffleNet and other CNNs compiled, tuned and deployed with Apache TVM.

The Python API (``tvmshuffle.api``, loaded on first use so that the command line starts fast):
``load``, ``compile`` (an ``Artifact`` that runs, checks, times and saves itself), ``tune``,
``deploy`` (``count_instructions`` on the emulated arm64 device) and ``compare``; errors are
``TvmShuffleError`` and its subclasses."""

from .errors import (BadInputError, BuildError, DatabaseError, DeviceError, ImportFailedError,
                     NumericsError, TvmShuffleError)

__version__ = "0.1.0"

_API = ("Artifact", "Model", "compare", "compile", "count_instructions", "deploy", "deployment",
        "load", "tune")
__all__ = [*_API, "BadInputError", "BuildError", "DatabaseError", "DeviceError",
           "ImportFailedError", "NumericsError", "TvmShuffleError", "__version__"]


def __getattr__(name: str):
    # tune, deploy and compare are stage modules too, callable as the API's functions
    # (_callable.py): importing them makes them the package's attributes
    if name in ("tune", "deploy", "compare"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tvmshuffle' has no attribute {name!r}")
