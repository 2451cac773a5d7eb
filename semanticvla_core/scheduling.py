"""Process handling: the normal scheduler for children, real-time priority for a control loop, and noticing a dying
child early.

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


def realtime_scheduling(priority: int) -> str | None:
    """Put the calling thread on SCHED_FIFO at ``priority`` (1-99): it then runs as soon as it is ready, ahead of
    every time-shared thread (what ros2_control does for its control loop). Threads it starts afterwards inherit
    the policy. Returns None when done, else why not (not Linux, no CAP_SYS_NICE / rtprio limit, a container
    without real-time bandwidth); the thread then stays where it was. Only for threads that sleep most of the time:
    a busy real-time thread starves the machine (the kernel keeps 5% per second for the rest)."""
    p = int(priority)
    if not 1 <= p <= 99:
        raise ValueError(f"real-time priority must be 1..99, got {priority}")
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(p))
    except AttributeError:
        return "this system has no SCHED_FIFO (not Linux)"
    except OSError as e:
        return (f"SCHED_FIFO {p} not permitted ({e.strerror}): give the user an rtprio limit "
                "(/etc/security/limits.d: '@realtime - rtprio 98') or CAP_SYS_NICE")
    return None


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
