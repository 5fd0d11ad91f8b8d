"""Report figures drawn once per content: a warm run copies the figure drawn before."""

from __future__ import annotations

import pytest

from tasks import plotting
from tasks.training.report import plot_training_report


def _report(reward: float) -> dict:
    steps = [{"step": s, "reward": reward, "win_rate": 0.5, "mean_rung": s / 2, "rung_counts": {0: 2 - s, 1: s}}
             for s in (1, 2)]  # fmt: skip
    return {"steps": steps, "final_rungs": {1: 2}}


def test_the_same_figure_is_copied_not_drawn_again(tmp_path, monkeypatch):
    figures = tmp_path / "reports" / ".figures"
    first = plot_training_report(_report(0.5), tmp_path / "reports" / "run-1" / "training.png", figures)
    assert first.read_bytes()[:4] == b"\x89PNG" and len(list(figures.glob("*.png"))) == 1

    def no_drawing(*args, **kwargs):
        pytest.fail("a figure drawn before was drawn again")

    monkeypatch.setattr("tasks.training.report.png_figure", no_drawing)
    second = plot_training_report(_report(0.5), tmp_path / "reports" / "run-2" / "training.png", figures)
    assert second.read_bytes() == first.read_bytes()

    monkeypatch.undo()  # other data: drawn, and kept beside the first
    third = plot_training_report(_report(0.7), tmp_path / "reports" / "run-3" / "training.png", figures)
    assert third.read_bytes() != first.read_bytes() and len(list(figures.glob("*.png"))) == 2


def test_the_key_follows_the_data_and_the_drawing_code(tmp_path, monkeypatch):
    key = plotting.drawn_before(tmp_path, plot_training_report, _report(0.5)).key
    assert plotting.drawn_before(tmp_path, plot_training_report, _report(0.5)).key == key
    assert plotting.drawn_before(tmp_path, plot_training_report, _report(0.6)).key != key
    source = tmp_path / "report.py"
    source.write_text("# the drawing code, changed\n")
    monkeypatch.setattr("tasks.training.report.__file__", str(source))
    assert plotting.drawn_before(tmp_path, plot_training_report, _report(0.5)).key != key


def test_without_a_folder_nothing_is_kept(tmp_path):
    assert plotting.drawn_before(None, plot_training_report, _report(0.5)) is None
    plot_training_report(_report(0.5), tmp_path / "training.png")
    assert [p.name for p in tmp_path.iterdir()] == ["training.png"]
