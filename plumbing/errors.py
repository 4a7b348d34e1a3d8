"""The one error type of the library: bad input the user can fix. Each script catches it and
prints `prog: error: MESSAGE`, one line and no traceback."""


class UserError(Exception):
    """Bad input the user can fix. The message names the file or flag and what to do next."""
