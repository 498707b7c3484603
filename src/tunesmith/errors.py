"""Errors meant for people: the CLI prints them as one line, without a traceback."""


class UserError(Exception):
    """A mistake the user can fix (bad path, bad flag, bad data). Message says what and how."""

    exit_code = 2


class DataErrors(UserError):
    """Data failed validation; the report was already printed."""

    exit_code = 1
