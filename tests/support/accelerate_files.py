"""Checks of a composed accelerate configuration, shared by the RL and SFT trainers' tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def assert_accelerate_reads(
    config: dict[str, Any], expected: dict[str, Any], folder: Path, port: int
) -> None:
    """`config` holds `expected` (dotted keys), and accelerate's own reader, which refuses unknown
    keys, reads it back with the same ranks and port."""
    import yaml
    from accelerate.commands.config.config_args import load_config_from_file

    for dotted, value in expected.items():
        node = config
        for key in dotted.split("."):
            node = node[key]
        assert node == value, dotted
    path = folder / "accelerate.yaml"
    path.write_text(yaml.safe_dump(config))
    parsed = load_config_from_file(str(path))
    assert parsed.num_processes == config["num_processes"] and parsed.main_process_port == port
