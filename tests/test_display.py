"""Where a session draws: Qt on a screen it can open, else no figures and one line why."""

import logging

import matplotlib
import pytest

from ptychonn_ophyd.session import display
from ptychonn_ophyd.session.display import NO_FIGURES, choose_backend


@pytest.fixture(autouse=True)
def keep_backend():
    backend = matplotlib.get_backend()
    yield
    matplotlib.use(backend)


def test_without_a_screen_there_are_no_figures_and_nothing_to_say(monkeypatch, caplog):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    monkeypatch.setattr(display, "qt_problem", lambda: pytest.fail("Qt probed without a screen"))

    assert choose_backend() == NO_FIGURES
    assert matplotlib.get_backend().lower() == "agg"
    assert not caplog.records


def test_mplbackend_agg_is_kept_on_a_screen(monkeypatch, caplog):
    monkeypatch.setenv("DISPLAY", ":0")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setattr(display, "qt_problem", lambda: pytest.fail("Qt probed for Agg"))

    assert choose_backend() == NO_FIGURES
    assert not caplog.records


@pytest.mark.processes
def test_a_screen_qt_cannot_open_gives_no_figures_and_one_line_saying_why(monkeypatch, caplog):
    monkeypatch.setenv("DISPLAY", ":9999")  # no X server there
    monkeypatch.delenv("MPLBACKEND", raising=False)
    caplog.set_level(logging.WARNING, "ptychonn_ophyd.session.display")

    assert choose_backend() == NO_FIGURES

    (said,) = [r.getMessage() for r in caplog.records]
    assert said == "no figures: Qt cannot open the screen :9999: could not connect to display :9999"
    assert "\n" not in said
