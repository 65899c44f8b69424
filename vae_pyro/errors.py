"""Exceptions users see as one line, never as a traceback."""


class VaePyroError(Exception):
    """Bad config, missing data or an unreadable checkpoint: says what is wrong and the fix."""


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived: a checkpoint was written; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for death by signal


def positive_int(value: object, key: str) -> int:
    """`value` (the config value at `key`) if it is an integer >= 1, else one clear error."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise VaePyroError(f"{key} must be a positive integer, got {value!r}")
    return value
