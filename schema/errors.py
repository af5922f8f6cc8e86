"""The one exception type lensdb shows to users.

Every layer raises a subclass with a message that says what is wrong and what to do; the CLI prints it on one
line and exits non-zero, the service turns it into a problem-details response. Anything else is a bug.
"""


class LensdbError(Exception):
    """A problem the user can act on; ``str(err)`` is the whole message."""


class StoreError(LensdbError):
    """The database file cannot be used as asked (locked, wrong schema version, not a lensdb store)."""


class NotFound(LensdbError):
    """The model, checkpoint, vector, trace or run asked for is not in the store."""


class UnknownToken(LensdbError):
    """The word or id is in no indexed vocabulary (or not in the one asked for)."""


class Cancelled(LensdbError):
    """The run was stopped on request (``DELETE /jobs/{id}``, Ctrl-C); nothing of it was written."""
