"""Errors of the run machinery (a method's own errors are whatever it raises)."""

from __future__ import annotations


class StageFailedError(RuntimeError):
    """A shared stage of a group (dense baseline, a method's training) failed earlier.

    The first cell that needed it holds the original traceback; the other cells
    of the group fail with this error at once instead of retraining.
    """


class WorkerDiedError(RuntimeError):
    """The process running a cell died (killed, out of memory, crashed in native code)."""


class TimingHandoffError(RuntimeError):
    """A compressed model could not be handed to the driver's timing phase."""


class LrChoiceMissingError(RuntimeError):
    """A row reuses another seed's recovery-lr choice (``lr_chosen_on: first-seed``) and
    that seed has no finished record of the row with one."""
