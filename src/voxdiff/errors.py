"""User-facing errors: one clear sentence, exit code 2 at the command line."""


class VoxdiffError(Exception):
    """An error caused by the user's input (bad file, bad option, mismatched data).

    The CLI prints the message as a single line and exits with code 2; library callers
    can catch it to tell input problems apart from bugs.
    """

    exit_code = 2
