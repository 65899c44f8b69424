"""Exceptions users see as one line, never as a traceback."""


class VaePyroError(Exception):
    """Bad config, missing data or an unreadable checkpoint: says what is wrong and the fix."""


class TrainingInterrupted(Exception):
    """SIGTERM/SIGINT arrived: a checkpoint was written; the message says how to resume."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum  # the shell's convention for death by signal
