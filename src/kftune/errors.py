"""Exceptions a user can act on.

Every stage raises :class:`KftuneError` (or a subclass) for problems with its input or
configuration. The CLI prints such an error as one line and exits non-zero; anything else
is a bug and keeps its traceback.
"""


class KftuneError(Exception):
    """A problem the user can fix: bad input, bad configuration, a failed check."""


class DataError(KftuneError):
    """Input data that cannot be used: missing file, bad format, bad column, bad rows."""


class ConfigError(KftuneError):
    """A configuration value outside what is allowed."""
