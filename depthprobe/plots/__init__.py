"""Figures as plotly ``Figure`` objects, and their export."""

from .cascade import cascade_figure, score_grid
from .export import find_browser, write_figure, write_html, write_static

__all__ = ["cascade_figure", "find_browser", "score_grid", "write_figure", "write_html",
           "write_static"]
