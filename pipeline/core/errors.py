"""User-facing errors: one line naming the file, key or value and the fix; never a traceback."""


class UserError(Exception):
    """A mistake in the user's input or setup. The CLI prints it as one line and exits 2."""
