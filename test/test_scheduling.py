"""AV1 encoding (SVT-AV1) must not leave the process on a real-time scheduler: children (ROS nodes started by
tests or the bring-up) would inherit SCHED_FIFO 99 and a busy DDS thread then freezes a 2-core machine."""
import os

import numpy as np
import pytest

from semanticvla_core.data.lerobot_v3 import LeRobotV3Writer


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="needs Linux scheduling calls")
def test_av1_encoding_leaves_normal_scheduling(tmp_path):
    feats = {"observation.images.cam": {"dtype": "video", "shape": [32, 32, 3], "names": ["height", "width", "channels"]},
             "action": {"dtype": "float32", "shape": [2], "names": None}}
    w = LeRobotV3Writer(tmp_path / "ds", fps=10, features=feats, video_codec="av1")
    for i in range(4):
        w.add_frame({"observation.images.cam": np.full((32, 32, 3), 40 * i, np.uint8),
                     "action": np.zeros(2, np.float32)})
    w.save_episode(task="t")
    w.finalize()
    assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_bringup_children_start_on_the_normal_scheduler():
    import subprocess
    import sys

    from semanticvla_core.scheduling import normal_scheduling

    out = subprocess.run([sys.executable, "-c", "import os; print(os.sched_getscheduler(0))"], capture_output=True,
                         text=True, preexec_fn=normal_scheduling, check=True).stdout
    assert int(out) == os.SCHED_OTHER


@pytest.mark.skipif(not hasattr(os, "sched_getscheduler"), reason="needs Linux scheduling calls")
def test_realtime_scheduling_moves_the_calling_thread_and_what_it_starts_later():
    """realtime_scheduling: the calling thread goes on SCHED_FIFO, a thread it started before stays time-shared, one
    it starts after inherits the policy; where not permitted, a reason and nothing changed. Run in a child process
    (the test process stays on the normal scheduler)."""
    import subprocess
    import sys

    from semanticvla_core.scheduling import normal_scheduling, realtime_scheduling

    code = """
import os, threading, time
from semanticvla_core.scheduling import realtime_scheduling
ids, stop = {}, threading.Event()
def run(name):
    ids[name] = threading.get_native_id()
    stop.wait()
before = threading.Thread(target=run, args=("before",)); before.start()
why = realtime_scheduling(7)
after = threading.Thread(target=run, args=("after",)); after.start()
while len(ids) < 2:
    time.sleep(0.01)
print(why is None, os.sched_getscheduler(0), os.sched_getscheduler(ids["before"]), os.sched_getscheduler(ids["after"]),
      os.sched_getparam(0).sched_priority, why)
stop.set()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         preexec_fn=normal_scheduling).stdout.split(maxsplit=5)
    done, main, before, after, prio = out[0] == "True", int(out[1]), int(out[2]), int(out[3]), int(out[4])
    if done:
        assert (main, before, after, prio) == (os.SCHED_FIFO, os.SCHED_OTHER, os.SCHED_FIFO, 7)
    else:
        assert (main, before, after) == (os.SCHED_OTHER,) * 3 and "rtprio" in out[5]
    for bad in (0, 100):
        with pytest.raises(ValueError, match="1..99"):
            realtime_scheduling(bad)
