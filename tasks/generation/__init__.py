"""Generation strategies (direct, agentwrite, think-then-write), keyed by name in `STRATEGIES`."""

from tasks.generation.batch import generate_many
from tasks.generation.strategies import (
    STRATEGIES,
    AgentWriteStrategy,
    DirectStrategy,
    PlanSection,
    Strategy,
    StrategyResult,
    StrategyStep,
    ThinkThenWriteStrategy,
    configured_strategy,
    count_words,
    parse_plan,
    split_think,
)

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
    "count_words",
    "generate_many",
    "parse_plan",
    "split_think",
]
