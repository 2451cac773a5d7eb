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
