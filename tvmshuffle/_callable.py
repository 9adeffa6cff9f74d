"""Stage modules that are also the Python API's functions of the same name.

``tvmshuffle.tune``, ``tvmshuffle.deploy`` and ``tvmshuffle.compare`` are modules (the stages)
and, once imported, attributes of the package that a function of the same name cannot replace.
So these modules are callable: ``tvmshuffle.tune(model, ...)`` calls ``tvmshuffle.api.tune``,
while ``from tvmshuffle import tune; tune.TuneConfig`` still reaches the stage."""

from __future__ import annotations

import sys
import types


class _StageModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        from . import api

        return getattr(api, self.__name__.rsplit(".", 1)[-1])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Make the module ``module_name`` (being imported) call the API function of its name."""
    sys.modules[module_name].__class__ = _StageModule
