"""A failed judgment under verl (tasks/training/verl_hooks.py): its rollout stays in verl's batch,
so its response mask is zeroed (every loss, the entropy bonus and GAE's whitening skip its tokens)
and, under GRPO, its score becomes its group's mean judged score (the group's baseline is the
judged rollouts' alone). These are the tensors verl's transfer queue holds: nested (jagged), one
row per rollout."""

from __future__ import annotations

import os
import shutil
import subprocess

import torch

from tasks.training.verl_hooks import failed_rows, group_mean_scores, mask_rows
from tests.support.paths import PROJECT_ROOT
from tests.support.verl_env import needs_verl, verl_python


def nested(rows: list[list[float]]) -> torch.Tensor:
    return torch.nested.as_nested_tensor([torch.tensor(r) for r in rows], layout=torch.jagged)


def test_failed_rows_read_compute_scores_extra_info():
    extra = [
        {"reward_extra_info": {"judge_failed": 0.0, "rung": 1.0}},
        {"reward_extra_info": {"judge_failed": 1.0, "rung": -1.0}},
        {"reward_extra_info": {}},  # a reward that never said: judged
        None,  # a padding row
    ]
    assert failed_rows(extra) == [False, True, False, False]


def test_a_failed_rollouts_mask_is_zeroed_and_every_length_kept():
    mask = nested([[1, 1, 1], [1, 1], [1, 0, 1, 1]])
    out = mask_rows(mask, [False, True, False])
    assert out.offsets().tolist() == mask.offsets().tolist()  # fields nested by the mask still line up
    assert [r.tolist() for r in out.unbind()] == [[1, 1, 1], [0, 0], [1, 0, 1, 1]]


def test_grpo_gives_a_failed_rollout_its_groups_mean_judged_score():
    # group a: judged 1.0 and 0.0, one failure; group b: its only rollout failed
    scores = nested([[0, 0, 1.0], [0, 0.0], [0, 0, 0, 0.0], [0, 0.0]])
    out = group_mean_scores(scores, ["a", "a", "a", "b"], [False, False, True, True])
    rows = [r.tolist() for r in out.unbind()]
    assert rows[:2] == [[0, 0, 1.0], [0, 0.0]]  # the judged ones untouched
    assert rows[2] == [0, 0, 0, 0.5]  # the group's mean, on the last token
    assert rows[3] == [0, 0.0]  # nothing judged in its group: 0 (and it is masked anyway)
    # the group's baseline is unchanged by the failure: the mean over a's rows is still 0.5
    assert sum(sum(r) for r in rows[:3]) / 3 == 0.5


VERL_ADVANTAGE_CHECK = """
import torch
from verl.trainer.ppo.core_algos import agg_loss, compute_gae_advantage_return, compute_grpo_outcome_advantage
from tasks.training.verl_hooks import group_mean_scores, mask_rows

def nested(rows):
    return torch.nested.as_nested_tensor([torch.tensor(r, dtype=torch.float32) for r in rows], layout=torch.jagged)

# PPO (GAE): rollout 1's judgment failed. Masked, it changes nobody else's advantage or loss.
rewards = torch.zeros(3, 4)
rewards[:, -1] = torch.tensor([1.0, 0.0, 0.5])
values = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.5, 0.5], [0.0, 0.1, 0.0, 0.1]])
mask = mask_rows(nested([[1] * 4] * 3), [False, True, False]).to_padded_tensor(0.0)
adv, _ = compute_gae_advantage_return(rewards, values, mask, gamma=1.0, lam=1.0)
alone, _ = compute_gae_advantage_return(rewards[[0, 2]], values[[0, 2]], torch.ones(2, 4), gamma=1.0, lam=1.0)
assert torch.allclose(adv[[0, 2]], alone, atol=1e-6), (adv, alone)
# verl's FSDP engine divides by every token of the loss mask (left whole): the failed rollout adds
# nothing to the sum, and a mini-batch of failures only is a zero loss, never 0/0.
loss = torch.arange(12, dtype=torch.float32).reshape(3, 4)
assert torch.isclose(agg_loss(loss, mask, "token-mean", batch_num_tokens=12), loss[[0, 2]].sum() / 12)
assert agg_loss(loss, torch.zeros(3, 4), "token-mean", batch_num_tokens=12) == 0

# GRPO: the failed rollout gets its group's mean judged score: advantage 0, the baseline theirs.
scores = group_mean_scores(nested([[0, 0, 1.0], [0, 0, 0.0], [0, 0, 0.0]]), ["a", "a", "a"], [False, True, False])
mask = mask_rows(nested([[1] * 3] * 3), [False, True, False]).to_padded_tensor(0.0)
import numpy as np
adv, _ = compute_grpo_outcome_advantage(scores.to_padded_tensor(0.0), mask, np.array(["a", "a", "a"]))
assert torch.all(adv[1] == 0), adv
assert adv[0, -1] > 0 > adv[2, -1] and torch.isclose(adv[0, -1], -adv[2, -1]), adv  # about the judged mean 0.5
print("ok")
"""


@needs_verl
def test_verl_own_advantages_leave_a_masked_failure_out():
    """verl 0.9.1's own GAE, GRPO and loss aggregation on the tensors the mixin writes."""
    done = subprocess.run([str(verl_python()), "-c", VERL_ADVANTAGE_CHECK], capture_output=True, text=True,
                          cwd=PROJECT_ROOT, env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=300)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


TRANSFER_QUEUE_CHECK = """
import ray, torch
import transfer_queue as tq
from verl.utils.tensordict_utils import list_of_dict_to_tensordict
from tasks.training.verl_hooks import JudgeFailureMasking

ray.init(num_cpus=8, include_dashboard=False, object_store_memory=80 * 1024**2, _temp_dir=TEMP)
tq.init()  # its controller and storage units, as verl's TaskRunner starts them
try:
    # three rollouts of one prompt, stored as verl's agent loop stores them; the second's judgment failed
    rows = [{"uid": "p0", "response_mask": torch.ones(n, dtype=torch.int64),
             "rm_scores": torch.cat([torch.zeros(n - 1), torch.tensor([score])]),
             "extra_fields": {"reward_extra_info": {"judge_failed": failed, "rung": 0.0}}}
            for n, score, failed in [(3, 0.5, 0.0), (2, 0.0, 1.0), (4, 1.5, 0.0)]]
    batch = tq.kv_batch_put(keys=["k0", "k1", "k2"], partition_id="train", fields=list_of_dict_to_tensordict(rows),
                            tags=[{"status": "success"}] * 3)

    class Verl:  # what verl's own _compute_advantage then reads back
        def _compute_advantage(self, batch, metrics):
            return tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id,
                                   select_fields=["response_mask", "rm_scores"])

    class Trainer(JudgeFailureMasking, Verl):
        class config:
            class algorithm:
                adv_estimator = "grpo"

    metrics = {}
    seen = Trainer()._compute_advantage(batch, metrics)
    assert metrics["judge/masked_rollouts"] == 1.0, metrics
    assert [r.tolist() for r in seen["response_mask"].unbind()] == [[1, 1, 1], [0, 0], [1, 1, 1, 1]]
    assert [r.tolist() for r in seen["rm_scores"].unbind()] == [[0, 0, 0.5], [0, 1.0], [0, 0, 0, 1.5]]
finally:
    tq.close()
    ray.shutdown()
print("ok")
"""


@needs_verl
def test_the_masking_reads_and_writes_verls_transfer_queue(tmp_path):
    """verl's transfer queue (its controller and storage units under Ray, on the CPU): the mixin
    reads the rollouts as verl's agent loop stored them and writes the mask and scores back where
    verl's own advantage step reads them."""
    temp = f"/tmp/ray-wrl-tq-{os.getpid()}"  # short: Ray's socket paths have a length limit
    script = f"TEMP = {temp!r}\n" + TRANSFER_QUEUE_CHECK
    try:
        done = subprocess.run([str(verl_python()), "-c", script], capture_output=True, text=True, cwd=PROJECT_ROOT,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}, timeout=300)  # fmt: skip
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
