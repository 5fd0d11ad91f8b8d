"""One way to draw a report figure to a PNG file (matplotlib, headless), and to not draw it again.

Every run writes its report under `reports/<run id>/`. A run whose stages were all cache hits
reports the same data as the run before it, so its figures can be copies: given a folder of
figures (`reports/.figures/`), a figure drawn before from the same data by the same code is copied
instead of drawn (drawing the demo's three figures took ~1 s of a ~8 s warm demo, measured on 2
cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DrawnBefore:
    """A figure's place in a folder of figures drawn before: `<folder>/<key>.png`."""

    folder: Path
    key: str

    @property
    def path(self) -> Path:
        return self.folder / f"{self.key}.png"

    def copy_to(self, path: Path) -> bool:
        """Copies the figure to `path` if it was drawn before; False if not."""
        if not self.path.is_file():
            return False
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path, path)
        return True

    def keep(self, drawn: Path) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(drawn, partial)
        partial.replace(self.path)  # whole or absent: another process may be copying it


def drawn_before(folder: Path | None, draw: Callable, *data: Any) -> DrawnBefore | None:
    """The figure `draw` makes of `data`, keyed by that data and by the source of the module that
    draws it and of this one (a change to either draws anew). None without a folder."""
    if folder is None:
        return None
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode())
    for module in (sys.modules[draw.__module__], sys.modules[__name__]):
        digest.update(Path(module.__file__).read_bytes())
    return DrawnBefore(folder, digest.hexdigest()[:32])


@contextmanager
def png_figure(
    path: Path, ncols: int, figsize: tuple[float, float], keep: DrawnBefore | None = None
) -> Iterator[Any]:
    """Yields the row of `ncols` axes; on exit the figure is saved to `path` (folders created)
    and closed, also when drawing failed (no figure leaks in a long-lived process). With `keep`,
    the PNG is also kept there for the next run."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=figsize)
    try:
        yield axes
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    if keep is not None:
        keep.keep(path)
