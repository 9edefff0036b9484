"""What made a step's checkpoint: a hash of the step's kind and configuration, recorded with its
output so a rerun reuses the output only while the definition would make it the same way."""

from __future__ import annotations

import hashlib
import json

from conveyor.workflows.definitions import StepSpec


def step_fingerprint(spec: StepSpec) -> str:
    """SHA-256 of the step's kind and (unrendered) config. Retry and timeout are left out: they
    change how often a step is tried, not what it outputs."""
    canonical = json.dumps(
        {"kind": spec.kind, "config": spec.config}, sort_keys=True, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
