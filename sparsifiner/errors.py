"""The one exception type users see: a one-line message that says what to do.

Library code raises :class:`SparsifinerError` for bad input (wrong settings, missing
files, unsupported architectures); the CLI prints its message on one line and exits
with status 2, without a traceback.
"""


class SparsifinerError(ValueError):
    """Bad input or an unsupported request, with a message that says how to fix it."""
