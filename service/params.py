"""Path and query parameters parsed strictly: a whole number is ASCII digits with an optional minus sign.

Python's ``int()`` (and pydantic's lax mode with it) reads ``7_0`` as 70, `` 7`` and ``+7`` as 7 and ``7.0`` as
7, so ``/vectors/m/ff_value/7_0/1`` would answer for layer 70. Every integer the HTTP surface takes goes through
``Whole`` instead, and anything else is a 422 problem.
"""

import re
from typing import Annotated

from pydantic import BeforeValidator

_DIGITS = re.compile(r"-?[0-9]{1,20}")


def digits_only(value: object) -> object:
    """``value`` unchanged when it is not text or is a whole number in digits; else a ValueError."""
    if isinstance(value, str) and not _DIGITS.fullmatch(value):
        raise ValueError("expected a whole number written in digits (no spaces, signs, underscores or decimals)")
    return value


Whole = Annotated[int, BeforeValidator(digits_only)]
