"""The Franka Emika Panda's limits, in one place (the checker, the sim's controllers and the expert read them here).

Source: Franka Control Interface documentation, "Robot and interface specifications" -> "Limits for Panda"
(frankaemika.github.io/docs/control_parameters.html, the datasheet values libfranka enforces). Joint position
limits are also in the URDF (franka_description / example-robot-data); the checker takes them from the URDF it
loads and a test checks that they equal the datasheet values below.

Joint space (per joint 1..7):
  position  q_min / q_max [rad]      velocity dq_max [rad/s]
  accel.    ddq_max [rad/s^2]        jerk     dddq_max [rad/s^3]
Cartesian (the TCP / flange):
  translation: velocity 1.7 m/s, acceleration 13 m/s^2, jerk 6500 m/s^3
  rotation:    velocity 2.5 rad/s, acceleration 25 rad/s^2, jerk 12500 rad/s^3
"""
from __future__ import annotations

import numpy as np

PANDA_POSITION_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])   # rad
PANDA_POSITION_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])          # rad
PANDA_VELOCITY_LIMITS = np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61])                   # rad/s
PANDA_ACCEL_LIMITS = np.array([15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0])                           # rad/s^2
PANDA_JERK_LIMITS = np.array([7500.0, 3750.0, 5000.0, 6250.0, 7500.0, 10000.0, 10000.0])           # rad/s^3

CARTESIAN_VELOCITY_LIMIT_M_S = 1.7
CARTESIAN_ACCEL_LIMIT_M_S2 = 13.0
CARTESIAN_JERK_LIMIT_M_S3 = 6500.0
CARTESIAN_ROT_VELOCITY_LIMIT_RAD_S = 2.5
CARTESIAN_ROT_ACCEL_LIMIT_RAD_S2 = 25.0
CARTESIAN_ROT_JERK_LIMIT_RAD_S3 = 12500.0

# The Cartesian (ee_delta) controller's own per-period clipping (the sim's env.step and the safety filter's model of
# it): one ee_delta row moves the TCP target at most this far from the measured TCP.
EE_DELTA_MAX_POS_M = 0.05
EE_DELTA_MAX_ROT_RAD = 0.3
