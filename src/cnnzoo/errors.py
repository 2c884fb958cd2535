"""Errors the command line reports as one line, without a traceback, and its exit statuses."""

EXIT_RUNTIME = 1  # a runtime problem: missing data, a corrupt file
EXIT_USAGE = 2  # the request itself is wrong
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it
EXIT_TERMINATED = 143  # 128 + SIGTERM


class CnnzooError(Exception):
    """A runtime problem with a clear cause (the CLI exits with status 1)."""


class UsageError(CnnzooError, ValueError):
    """The request itself is wrong: an unknown name, an impossible number (exit status 2)."""


class WeightsError(CnnzooError, ValueError):
    """A weights or checkpoint file that cannot be used for this model."""


class DataError(CnnzooError):
    """A dataset that is missing, empty or unreadable."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (a batch scheduler, ``docker stop``, systemd): stop like Ctrl-C; exit status 143."""
