"""Instruments the SFT trainer's ranks for tests (`WRL_TRAINER_PLUGINS` names this module; each rank
imports it before anything else, tasks/training/sft_worker.py).

- WRL_TEST_SFT_FAIL_RANK: that rank fails as training starts (its trainer built, the other ranks
  already in training's collectives), with a RuntimeError naming it.
"""

from __future__ import annotations

import os

_fail_rank = os.environ.get("WRL_TEST_SFT_FAIL_RANK")

if _fail_rank is not None and os.environ.get("RANK", "0") == _fail_rank:
    import trl

    def _broken_train(self, *args, **kwargs):
        raise RuntimeError(f"rank {_fail_rank} broke on purpose")

    trl.SFTTrainer.train = _broken_train
