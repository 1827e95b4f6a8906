"""The one exception type users see as a one-line message (the CLI prints it without a traceback)."""


class KvlError(Exception):
    """A problem with the user's input or environment, phrased for the user: name the file and the problem."""
