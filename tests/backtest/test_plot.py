"""The backtest's plot: dollar signs are money, never matplotlib's math mode."""

from __future__ import annotations

from matplotlib.text import Text

from agent.backtest import replay, settle
from agent.backtest.plot import backtest_figure
from agent.domain.settings import Policy
from tests.backtest.helpers import one_class, year_2024


def test_every_text_of_the_plot_keeps_its_dollar_signs() -> None:
    intervals = year_2024()
    fleet = one_class(60.0)
    settled = settle(replay(fleet, Policy(), intervals), intervals, fleet,
                     timezone="America/Chicago").frame  # fmt: skip
    title = "site at $49/PH/day, $34,300 of $400,500 withheld"
    figure = backtest_figure(settled, "America/Chicago", title)
    figure.canvas.draw()  # tick labels are written at draw time
    texts = [t for t in figure.findobj(Text) if "$" in t.get_text()]
    assert any(title in t.get_text() for t in texts)
    assert texts
    assert all(not t.get_parse_math() for t in texts)
