"""How a failed item's reason is recorded by every batch job: the exception's type and message, one line."""

from __future__ import annotations

import traceback


def describe_error(error: BaseException) -> str:
    """`ValueError: motion: body_pose has NaN` — the last line of the traceback, without the stack."""
    return "".join(traceback.format_exception_only(type(error), error)).strip()
