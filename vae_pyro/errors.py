"""The one exception type users see: a message that says what is wrong and how to fix it."""


class VaePyroError(Exception):
    """Bad config, missing data or an unreadable checkpoint; printed as one line, no traceback."""
