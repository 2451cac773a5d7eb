"""Process handling for the supervisors: the normal scheduler for children, and noticing a dying child early.

Keep processes on the normal (time-sharing) scheduler:

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


EXIT_POLL_S = 0.005          # how often the supervisor looks for an exiting node (~0.5% of one core for the graph)
_PF_EXITING = 0x00000004     # linux/sched.h: set by do_exit() before the process's memory is released


def process_exiting(pid: int) -> bool:
    """True once the kernel has begun to end process ``pid`` (PF_EXITING set, a zombie, or gone) — before its
    parent's ``wait()`` returns. False while it runs, sleeps or is stopped, and on systems without ``/proc``."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return os.path.isdir("/proc/self")           # gone (reaped) where /proc exists; no /proc: cannot tell
    except OSError:
        return False
    fields = stat[stat.rfind(b")") + 2:].split()      # after "pid (comm) ": state ppid pgrp session tty tpgid flags
    try:
        return fields[0] in (b"Z", b"X", b"x") or bool(int(fields[6]) & _PF_EXITING)
    except (IndexError, ValueError):
        return False
