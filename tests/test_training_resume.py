"""SIGKILL a training process after a checkpoint, then run again: it resumes from the newest
checkpoint with the curriculum exactly as it was at that checkpoint, not as it was at the kill,
and ends where an uninterrupted run ends (same judgments, same weights)."""

from __future__ import annotations

import signal
import time

import pytest

from configs.loading import load_recipe
from storage import open_storage
from tests.support.recipes import train_recipe
from tests.support.train_worker import start as _start
from tests.support.train_worker import summary_of, weights_digest

# A drill with real processes (tens of seconds): run by `make test` after the fast suite.
pytestmark = pytest.mark.slow


def _rows(storage, sql, params=()):
    with storage.catalog.connect() as con:
        return con.execute(sql, list(params)).fetchall()


def _judgments(storage):
    return _rows(storage, "SELECT step, sample_index, instruction_id, rung, verdict, reward, completion_chars "
                          "FROM train_judgments ORDER BY step, sample_index")  # fmt: skip


def test_training_killed_after_a_checkpoint_resumes_with_that_checkpoints_curriculum(
    tiny_model_dir, tmp_path
):
    for run in ("killed", "uninterrupted"):
        (tmp_path / run).mkdir()
    recipe_path = train_recipe(tmp_path / "killed", tiny_model_dir, max_steps=4)
    storage = open_storage(load_recipe(recipe_path).storage)

    first = _start(recipe_path, delay_s=1.5)
    deadline = time.monotonic() + 300
    while True:  # wait for checkpoint-2 and at least one step after it
        assert first.poll() is None, first.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "training never got past its first checkpoint"
        try:
            snapshots = _rows(storage, "SELECT DISTINCT step FROM curriculum_snapshots")
            steps = _rows(storage, "SELECT max(step) FROM train_judgments")
        except Exception:  # tables not there yet (migrations run on first access)
            snapshots, steps = [], [(None,)]
        if (2,) in snapshots and steps[0][0] is not None and steps[0][0] >= 3:
            break
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    killed_at = time.time()

    (curriculum_id,) = _rows(storage, "SELECT curriculum_id FROM curricula")[0]
    checkpoints = sorted(p.name for p in (storage.root / "training").glob("*/checkpoint-*"))
    assert checkpoints and checkpoints[-1] == "checkpoint-2"  # step 3 was held: the kill landed in it
    resume_step = int(checkpoints[-1].split("-")[1])
    snapshot = dict(_rows(storage, "SELECT instruction_id, rung FROM curriculum_snapshots WHERE curriculum_id = ? "
                                   "AND step = ?", (curriculum_id, resume_step)))  # fmt: skip
    kept = _rows(storage, "SELECT * FROM curriculum_history WHERE step <= ? ORDER BY step, instruction_id",
                 (resume_step,))  # fmt: skip
    lost_tail = _rows(storage, "SELECT count(*) FROM train_judgments WHERE step > ?", (resume_step,))[0][0]
    assert lost_tail > 0, "the kill landed exactly on a checkpoint; nothing to roll back"

    second = _start(recipe_path)
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, err[-3000:]
    summary = summary_of(out)
    assert summary["resumed_from"] == resume_step and summary["steps"] == 4

    # Steps up to the checkpoint are untouched; the next step started from the snapshot.
    assert _rows(storage, "SELECT * FROM curriculum_history WHERE step <= ? ORDER BY step, instruction_id",
                 (resume_step,)) == kept  # fmt: skip
    following = _rows(storage, "SELECT instruction_id, rung_before FROM curriculum_history WHERE step = ?",
                      (resume_step + 1,))  # fmt: skip
    assert following and all(rung == snapshot[iid] for iid, rung in following)
    # Every step 1..4 recorded exactly once; the lost tail was trained and judged again.
    steps = [s for (s,) in _rows(storage, "SELECT step FROM train_judgments GROUP BY step ORDER BY step")]
    assert steps == [1, 2, 3, 4]
    redone = _rows(
        storage, "SELECT min(epoch(recorded_at)) FROM train_judgments WHERE step > ?", (resume_step,)
    )
    assert redone[0][0] > killed_at - 1
    # The curriculum replays consistently: each step's rung_before is the previous step's rung_after.
    history = _rows(storage, "SELECT step, instruction_id, rung_before, rung_after FROM curriculum_history "
                             "ORDER BY step")  # fmt: skip
    last = {}
    for _, iid, before, after in history:
        assert before == last.get(iid, 0)
        last[iid] = after

    # The resumed run ends where an uninterrupted one does: same prompts, rollouts and judgments
    # for every step, and the same final weights (bit for bit).
    reference_path = train_recipe(tmp_path / "uninterrupted", tiny_model_dir, max_steps=4)
    reference = _start(reference_path)
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    reference_storage = open_storage(load_recipe(reference_path).storage)
    assert _judgments(storage) == _judgments(reference_storage)
    assert weights_digest(summary["model_path"]) == weights_digest(summary_of(out)["model_path"])


def test_a_resumed_run_draws_each_epochs_prompts_in_the_uninterrupted_runs_order():
    """TRL's sampler draws each epoch's order from one generator seeded once: a run resumed in
    epoch 2 would draw epoch 0's order. Epoch-seeded, the order depends on the epoch alone."""
    from trl.trainer.utils import RepeatSampler

    from tasks.training.trainer import epoch_seeded

    def sampler():
        return epoch_seeded(RepeatSampler(list(range(7)), mini_repeat_count=2, batch_size=3, seed=42))

    uninterrupted = sampler()
    orders = []
    for epoch in range(3):
        uninterrupted.set_epoch(epoch)
        orders.append(list(uninterrupted))
    assert orders[0] != orders[1] != orders[2]  # still shuffled per epoch
    resumed = sampler()
    resumed.set_epoch(2)
    assert list(resumed) == orders[2]
    first = RepeatSampler(list(range(7)), mini_repeat_count=2, batch_size=3, seed=42)
    assert list(first) == orders[0]  # epoch 0 is TRL's own order
