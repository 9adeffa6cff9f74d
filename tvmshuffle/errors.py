"""The one exception family of tvmshuffle.

Library code raises these (with ``from err`` when wrapping another exception); the CLI turns
them into a one-line ``Error: ...`` and the exit code of the class, never a traceback.
"""


class TvmShuffleError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    exit_code = 1


class BadInputError(TvmShuffleError):
    """A model file, model name, size or option that cannot be used as given."""

    exit_code = 2


class ImportFailedError(TvmShuffleError):
    """A model that could not be imported into Relax (unsupported op, broken graph)."""

    exit_code = 3


class BuildError(TvmShuffleError):
    """Compilation or export of the module failed."""

    exit_code = 4


class NumericsError(TvmShuffleError):
    """A compiled module whose output disagrees with the reference."""

    exit_code = 5


class DeviceError(TvmShuffleError):
    """An RPC tracker that cannot be reached, or no device for the key."""

    exit_code = 6


class DatabaseError(TvmShuffleError):
    """A tuning database that cannot be read as it is (corrupt or truncated line)."""

    exit_code = 7


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, for one-line errors from deep failures."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
