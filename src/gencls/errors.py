"""Errors a user can cause. The CLI turns them into one line and a non-zero exit."""


class GenclsError(Exception):
    """A problem with the user's input, files or flags: reported without a traceback."""


class InputError(GenclsError):
    """An input file (image, run directory, checkpoint) that cannot be used."""


class DataUnavailableError(GenclsError):
    """No source could provide a dataset."""
