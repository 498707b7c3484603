"""Errors meant for people: the CLI prints them as one line, without a traceback."""

import errno


class UserError(Exception):
    """A mistake the user can fix (bad path, bad flag, bad data). Message says what and how."""

    exit_code = 2


class NotFound(UserError):
    """A run, tag, queue or item that is not there (the web app answers 404)."""


class DataErrors(UserError):
    """Data failed validation; the report was already printed."""

    exit_code = 1


def disk_full(e: BaseException) -> bool:
    """ENOSPC (or a quota) as an OSError, or inside the message of a library's own error type
    (safetensors raises SafetensorError with the OS message)."""
    return getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e)


class WillNotFit(UserError):
    """The plan predicts more memory than the machine has; the plan and what would fit were printed."""

    exit_code = 4
