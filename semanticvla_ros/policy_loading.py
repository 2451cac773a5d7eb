"""Loading a policy checkpoint for a node: never raises; returns (policy or None, error text)."""
from __future__ import annotations

import os


def load_policy(checkpoint: str, device: str, dtype: str, logger):
    if not checkpoint:
        msg = ("no checkpoint: set the 'checkpoint' parameter (or launch argument) to a policy directory; "
               "holding the arm")
        logger.error(msg)
        return None, msg
    try:
        import torch

        from semanticvla_core.policy import SemanticVLAPolicy

        # several nodes share the CPU: one intra-op thread each avoids oversubscription (measured: 2 threads per
        # node made the 20 Hz controller fall behind on a 2-core machine)
        torch.set_num_threads(int(os.environ.get("SEMANTICVLA_TORCH_THREADS", "1")))
        policy = SemanticVLAPolicy.from_pretrained(checkpoint, device=device, dtype=dtype)
        logger.info(f"loaded policy from {checkpoint} on {device} ({dtype})")
        return policy, ""
    except Exception as e:  # noqa: BLE001 - a bad checkpoint must not kill the node
        msg = f"cannot load checkpoint {checkpoint!r}: {type(e).__name__}: {e}; holding the arm"
        logger.error(msg)
        return None, msg
