"""Keep processes on the normal (time-sharing) scheduler.

SVT-AV1 (PyAV's ``libsvtav1`` encoder, used for AV1 videos) switches the calling thread to SCHED_FIFO priority 99
when it can (as root). Every process started from that thread afterwards inherits real-time priority, and a
busy DDS thread at FIFO 99 then starves a 2-core machine (seen: two ROS nodes at 100% CPU, everything else
frozen). Call :func:`normal_scheduling` after encoding and in child processes before they start.
"""
from __future__ import annotations

import os


def normal_scheduling() -> None:
    """Put the calling thread back on SCHED_OTHER if something raised it to a real-time policy."""
    try:
        if os.sched_getscheduler(0) != os.SCHED_OTHER:
            os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or not permitted: nothing to undo
        pass
