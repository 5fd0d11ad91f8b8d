"""Compose verl's PPO trainer configuration with the given overrides and validate it, by verl's own
machinery, without starting Ray or a trainer. Runs in verl's environment, as a script:

    .verl-venv/bin/python tasks/training/verl_compose.py key=value ...

It imports nothing of this project. Prints one JSON object: the composed job config (Hydra's
`--cfg job`, resolved), the keys still missing (`???`), whether verl builds a critic and a reference
model, and `error` when composition or `verl.utils.config.validate_config` refuses the overrides.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    import verl.trainer.config as config_package
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    out: dict = {}
    try:
        folder = os.path.dirname(config_package.__file__)
        with initialize_config_dir(config_dir=folder, version_base=None):
            cfg = compose(config_name="ppo_trainer", overrides=argv)
        OmegaConf.resolve(cfg)  # a bad interpolation fails here
        out["missing"] = sorted(OmegaConf.missing_keys(cfg))
        out["critic"] = bool(need_critic(cfg))
        out["reference"] = bool(need_reference_policy(cfg))
        validate_config(cfg, use_reference_policy=out["reference"], use_critic=out["critic"])
        out["config"] = OmegaConf.to_container(cfg)
    except Exception as exc:  # the caller reports it with the overrides it sent
        out["error"] = f"{type(exc).__name__}: {exc}"
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    return 1 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
