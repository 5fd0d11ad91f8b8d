"""verl's custom reward function for `training.engine: verl`: verl loads this file by path
(`reward.custom_reward_function.path`, tasks/training/verl_config.py) in each of its reward workers.

`compute_score` is verl's signature (verl 0.9.1 `experimental/reward_loop/reward_manager/naive.py`
awaits an async one). It does not judge: it hands the rollout to the run's one reward actor
(tasks/training/reward_service.py), found by name, so every worker shares one judge client with
its rate and token limits, one response cache and one curriculum writer. The row's `extra_info`
(the ladder export's: `instruction_id`, `split`) says which ladder and which split; `actor` comes
from `reward_kwargs`.

verl keeps the dict's other keys as per-sample extra info: `judge_failed` marks a failed judgment,
which must never count as a win or a loss (docs/training.md, "The verl engine").
"""

from __future__ import annotations

from typing import Any

from tasks.training.reward_service import ACTOR_NAMESPACE

_actors: dict[str, Any] = {}  # one handle per actor name, per worker process


def _actor(name: str, namespace: str) -> Any:
    if name not in _actors:
        import ray

        _actors[name] = ray.get_actor(name, namespace=namespace)
    return _actors[name]


async def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: dict[str, Any] | None = None,
    *,
    actor: str,
    namespace: str = ACTOR_NAMESPACE,
    **_: Any,
) -> dict[str, float]:
    """The rollout's reward from the run's reward actor: {"score", "judge_failed", "rung"}."""
    info = extra_info or {}
    instruction_id = info.get("instruction_id")
    if not instruction_id:
        raise ValueError(
            f"verl row without extra_info.instruction_id (data_source {data_source!r}): the train stage's "
            "ladder export writes it; this file reads only that export"
        )
    import ray

    split = info.get("split", "train")
    try:
        return await _actor(actor, namespace).score.remote(instruction_id, solution_str, split)
    except ray.exceptions.RayActorError:  # a handle cached before the actor was replaced: look it up again
        _actors.pop(actor, None)
        return await _actor(actor, namespace).score.remote(instruction_id, solution_str, split)
