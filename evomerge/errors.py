"""The one exception type for mistakes a user can fix (bad config, missing folder, ...).

The CLI prints its message as one line and exits with code 2; every other exception is a bug
and keeps its traceback.
"""


class EvomergeError(Exception):
    """A problem in the user's input; the message says what is wrong and how to fix it."""
