"""Small references that stages pass around instead of data."""

from __future__ import annotations

import re
from dataclasses import dataclass

_REF = re.compile(r"^(?P<name>[a-z0-9][a-z0-9_\-]*)@(?P<version>\d+)$")


@dataclass(frozen=True, order=True)
class DatasetRef:
    """One immutable version of a named dataset: `generations@3`."""

    name: str
    version: int

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"

    @classmethod
    def parse(cls, text: str) -> DatasetRef:
        match = _REF.match(text.strip())
        if not match:
            raise ValueError(
                f"'{text}' is not a dataset reference; expected NAME@VERSION, e.g. generations@3"
            )
        return cls(match["name"], int(match["version"]))
