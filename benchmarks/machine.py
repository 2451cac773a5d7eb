"""What every benchmark prints about the machine it ran on: the one helper lives in semanticvla_core.machine."""
from __future__ import annotations

from semanticvla_core.machine import cpu_model  # noqa: F401 (re-exported for the benchmarks)
