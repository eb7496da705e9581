class CharrnnError(Exception):
    """A problem with the user's input or files, reported as one line without a traceback."""


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after saving; `exit_code` is 130 or 143."""

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code
