"""The exception types for problems a user can fix (bad config, missing folder, a broken setup).

The CLI prints their message as one line and exits with their code; every other exception is a bug
and keeps its traceback.
"""


class EvomergeError(Exception):
    """A problem in the user's input; the message says what is wrong and how to fix it."""

    exit_code = 2


class RunStopped(EvomergeError):
    """A run that cannot usefully go on (its candidates fail systematically); its log is kept."""

    exit_code = 3
