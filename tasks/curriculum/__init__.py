"""The dynamic reference scheduling curriculum: the rules (scheduling.py). The state lives in
storage/curriculum.py (`storage.curriculum`, a `CurriculumStore`)."""

from storage.curriculum import CurriculumError, CurriculumStore, Promotion, StepOutcome
from tasks.curriculum.scheduling import (
    LadderShape,
    OutcomeCounts,
    PromotionRule,
    build_outcome,
    count_outcomes,
    is_failure,
    mean_reward,
    reference_rung,
    sample_key,
    should_promote,
    substitute_retired,
    validate_static_rung,
)

__all__ = [
    "CurriculumError",
    "CurriculumStore",
    "LadderShape",
    "OutcomeCounts",
    "Promotion",
    "PromotionRule",
    "StepOutcome",
    "build_outcome",
    "count_outcomes",
    "is_failure",
    "mean_reward",
    "reference_rung",
    "sample_key",
    "should_promote",
    "substitute_retired",
    "validate_static_rung",
]
