"""Figures as plotly ``Figure`` objects, their export, and redrawing from a run folder."""

from .cascade import cascade_figure, score_grid
from .compare import compare_figure
from .curves import add_depth_curves, curves_by_method, depth_curves_figure
from .diagram import average_diagram, cascade_diagram, example_diagram
from .export import (BrowserNotFoundError, find_browser, write_figure, write_html,
                     write_static)
from .grid import patchscope_grid_figure
from .heatmap import heatmap_figure
from .recurrence import recurrence_diagram
from .replot import FIGURE_KINDS, figure_from_run
from .tables import RunTables, load_run, token_table

__all__ = ["FIGURE_KINDS", "BrowserNotFoundError", "RunTables", "add_depth_curves",
           "average_diagram", "cascade_diagram", "cascade_figure", "compare_figure",
           "curves_by_method", "depth_curves_figure", "example_diagram", "figure_from_run",
           "find_browser", "heatmap_figure", "load_run", "patchscope_grid_figure",
           "recurrence_diagram", "score_grid",
           "token_table", "write_figure", "write_html", "write_static"]
