"""Compose verl's PPO trainer configuration with the given overrides and validate it, by verl's own
machinery (tasks/training/verl_entry.py, as the train stage's driver does), without starting Ray
or a trainer. Runs in verl's environment, as a script, with this project on PYTHONPATH:

    PYTHONPATH=. .verl-venv/bin/python tasks/training/verl_compose.py key=value ...

Prints one JSON object: the composed job config (Hydra's `--cfg job`, resolved), the keys still
missing (`???`), whether verl builds a critic and a reference model, and `error` when composition
or `verl.utils.config.validate_config` refuses the overrides.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    from tasks.training.verl_entry import compose, validate

    out: dict = {}
    try:
        cfg = compose(argv)
        OmegaConf.resolve(cfg)  # a bad interpolation fails here
        out["missing"] = sorted(OmegaConf.missing_keys(cfg))
        out["critic"], out["reference"] = validate(cfg)
        out["config"] = OmegaConf.to_container(cfg)
    except Exception as exc:  # the caller reports it with the overrides it sent
        out["error"] = f"{type(exc).__name__}: {exc}"
    sys.stdout.write(json.dumps(out, default=str) + "\n")
    return 1 if "error" in out else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
