"""Generation strategies (direct, agentwrite, think-then-write), keyed by name in `STRATEGIES`.

The strategies are registered here, not in `strategies.py`: agentwrite imports the shared call
helpers from `strategies.py`, so registering it there would make the two import each other. Any
import of a `tasks.generation` module runs this first, so `STRATEGIES` is always complete.
"""

from tasks.generation.agentwrite import AgentWriteStrategy, PlanSection, parse_plan
from tasks.generation.batch import generate_many
from tasks.generation.strategies import (
    STRATEGIES,
    DirectStrategy,
    Strategy,
    StrategyResult,
    StrategyStep,
    ThinkThenWriteStrategy,
    configured_strategy,
)

STRATEGIES.register("direct")(DirectStrategy())
STRATEGIES.register("agentwrite")(AgentWriteStrategy())
STRATEGIES.register("think-then-write")(ThinkThenWriteStrategy())

__all__ = [
    "STRATEGIES",
    "AgentWriteStrategy",
    "DirectStrategy",
    "PlanSection",
    "Strategy",
    "StrategyResult",
    "StrategyStep",
    "ThinkThenWriteStrategy",
    "configured_strategy",
    "generate_many",
    "parse_plan",
]
