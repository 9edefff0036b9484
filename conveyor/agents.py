"""`from conveyor import agents` in users' modules: agent types live in
conveyor.workflows.agents."""

from conveyor.workflows.agents import SINGLE_ATTEMPT, AgentFunction, register

__all__ = ["SINGLE_ATTEMPT", "AgentFunction", "register"]
