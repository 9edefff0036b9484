"""Agents that exist only in tests, registered through the public registry like any user's agent."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from conveyor import agents


class ExplodeInput(BaseModel):
    """What the failure should say."""

    reason: str = "boom"


@agents.register("explode", "Always raises: exercises the failure path.", ExplodeInput)
def explode(payload: BaseModel) -> dict[str, Any]:
    assert isinstance(payload, ExplodeInput)
    raise ValueError(payload.reason)
