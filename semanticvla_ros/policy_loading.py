"""Loading a policy checkpoint for a node: never raises; returns (policy or None, error text).

:func:`resolve_checkpoint` is the one place a checkpoint argument is resolved: the launch file and the bring-up
(``checkpoint:=``, through :func:`semanticvla_ros.graph.resolve_arguments`) and the planner and controller nodes
(their ``checkpoint`` parameter, e.g. under ``ros2 run``) all call it, so '' means the same everywhere.
"""
from __future__ import annotations

import os
from pathlib import Path

CHECKPOINT_ENV = "SEMANTICVLA_CHECKPOINT"    # overrides the shipped demo checkpoint as the default
DEMO_CHECKPOINT = Path("checkpoints") / "demo"   # relative to the package's share directory / the source tree


def demo_checkpoint_candidates() -> list[Path]:
    """Where the shipped demo checkpoint may be, in order: the source tree this module belongs to (a checkout),
    then the package's share directory (``<prefix>/share/semanticvla_ros/checkpoints/demo``, installed by
    CMakeLists.txt). Neither depends on the working directory."""
    from .graph import share_dir, source_root

    return [root / DEMO_CHECKPOINT for root in dict.fromkeys(filter(None, [source_root(), share_dir()]))]


def resolve_checkpoint(value: str = "") -> str:
    """A checkpoint argument -> the directory to load ('' when there is none).

    Non-empty: returned as given (made absolute when it names a directory relative to the working directory, so
    every node started from here gets the same path). '' (the default): ``$SEMANTICVLA_CHECKPOINT`` if set, else the
    shipped demo checkpoint (:func:`demo_checkpoint_candidates`), else ''."""
    value = (value or "").strip()
    if value:
        p = Path(value).expanduser()
        return str(p.resolve()) if not p.is_absolute() and p.is_dir() else str(p)
    env = os.environ.get(CHECKPOINT_ENV, "").strip()
    if env:
        return env
    for p in demo_checkpoint_candidates():
        if (p / "config.json").is_file():
            return str(p)
    return ""


def load_policy(checkpoint: str, device: str, dtype: str, logger):
    resolved = resolve_checkpoint(checkpoint)
    if not resolved:
        msg = ("no checkpoint: the 'checkpoint' parameter (or launch argument) is empty and no demo checkpoint is "
               f"installed (looked for {', '.join(str(p) for p in demo_checkpoint_candidates())}; "
               f"${CHECKPOINT_ENV} unset): set it to a policy directory; holding the arm")
        logger.error(msg)
        return None, msg
    if resolved != checkpoint:
        logger.info(f"checkpoint {checkpoint!r} -> {resolved}")
    checkpoint = resolved
    try:
        import torch

        from semanticvla_core.policy import SemanticVLAPolicy

        # several nodes share the CPU: one intra-op thread each avoids oversubscription (measured: 2 threads per
        # node made the 20 Hz controller fall behind on a 2-core machine)
        torch.set_num_threads(int(os.environ.get("SEMANTICVLA_TORCH_THREADS", "1")))
        policy = SemanticVLAPolicy.from_pretrained(checkpoint, device=device, dtype=dtype)
        try:     # the first plan / decode would pay for lazy initialisation: pay it now, before the arm depends on it
            w = policy.warmup()
            warm = f"; warmed up: plan {w['plan_s'] * 1000:.0f} ms, decode {w['decode_s'] * 1000:.0f} ms"
        except Exception as e:  # noqa: BLE001 - a warm-up failure is reported, the real requests say more
            warm = f"; warm-up failed: {type(e).__name__}: {e}"
        logger.info(f"loaded policy from {checkpoint} on {device} ({dtype}){warm}")
        return policy, ""
    except Exception as e:  # noqa: BLE001 - a bad checkpoint must not kill the node
        msg = f"cannot load checkpoint {checkpoint!r}: {type(e).__name__}: {e}; holding the arm"
        logger.error(msg)
        return None, msg
