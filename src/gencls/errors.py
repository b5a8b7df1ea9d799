"""Errors a user can cause. The CLI turns them into one line and a non-zero exit."""


class GenclsError(Exception):
    """A problem with the user's input, files or flags: reported without a traceback."""


class InputError(GenclsError):
    """An input file (image, run directory, checkpoint) that cannot be used."""


class DataUnavailableError(GenclsError):
    """No source could provide a dataset."""


class TrainingStopped(GenclsError):
    """Training stopped early (a signal, a diverging loss, a failed write); the last checkpoint is intact."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code

    def __reduce__(self):  # keeps exit_code through pickling (compare's worker processes)
        return type(self), (str(self), self.exit_code)


class TrainingDiverged(TrainingStopped):
    """Training stopped because a loss or gradient stopped being finite (or exploded past the guard)."""
