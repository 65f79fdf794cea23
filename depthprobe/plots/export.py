"""Write figures as self-contained HTML and as PNG, SVG or PDF through kaleido."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
from pathlib import Path

import plotly.graph_objects as go

logger = logging.getLogger(__name__)

STATIC_FORMATS = ("png", "svg", "pdf")
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")
_server_started = False
INSTALL_HINT = ("Install one (Debian or Ubuntu: `apt-get install chromium`; elsewhere Chrome "
                "or Chromium, or run kaleido's `kaleido_get_chrome`, which downloads one), or "
                "set BROWSER_PATH to its executable.")


class BrowserNotFoundError(RuntimeError):
    """No Chromium-family browser was found, so no PNG, SVG or PDF can be written."""


def find_browser() -> str | None:
    """Return a Chromium-family browser path: ``$BROWSER_PATH`` or the first on ``PATH``."""
    env = os.environ.get("BROWSER_PATH")
    if env and Path(env).is_file():
        return env
    for name in _BROWSER_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _start_server() -> None:
    # One kept-alive kaleido browser exports every figure of a process; MathJax is off
    # because kaleido's default page would fetch it from a CDN.
    global _server_started
    if _server_started:
        return
    import kaleido

    os.environ.setdefault("BROWSER_PATH", _require_browser())
    kaleido.start_sync_server(mathjax=False, silence_warnings=True)
    atexit.register(kaleido.stop_sync_server, silence_warnings=True)
    _server_started = True


def _require_browser() -> str:
    browser = find_browser()
    if browser is None:
        raise BrowserNotFoundError("No Chromium browser found for static figure export. "
                                   + INSTALL_HINT)
    return browser


def write_html(fig: go.Figure, path: str | Path) -> Path:
    """Write a self-contained HTML file (plotly.js embedded, works offline)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fig.write_html(tmp, include_plotlyjs=True, full_html=True)
    tmp.replace(path)
    return path


def write_static(fig: go.Figure, path: str | Path, scale: float = 2.0) -> Path:
    """Write PNG, SVG or PDF, chosen by the file suffix, through kaleido and Chromium.

    Raises :class:`BrowserNotFoundError` when no browser is found.
    """
    import kaleido

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if fmt not in STATIC_FORMATS:
        raise ValueError(f"Unsupported figure format {fmt!r}; choose one of "
                         f"{', '.join(STATIC_FORMATS)} (or .html).")
    _require_browser()
    _start_server()
    tmp = path.with_name(path.stem + ".tmp." + fmt)
    kaleido.write_fig_sync(fig, path=str(tmp), opts=dict(format=fmt, scale=scale))
    tmp.replace(path)
    return path


def write_figure(fig: go.Figure, path: str | Path) -> Path:
    """Write a figure by suffix: ``.html`` or a static format (PNG, SVG, PDF).

    Without a browser for a static format, the figure is written as HTML beside ``path``
    (same name, ``.html`` suffix) and :class:`BrowserNotFoundError` names that file.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".html":
        return write_html(fig, path)
    if suffix.lstrip(".") not in STATIC_FORMATS:
        raise ValueError(f"Unsupported figure file {path}; end it in .html or one of "
                         f"{', '.join('.' + f for f in STATIC_FORMATS)}.")
    try:
        return write_static(fig, path)
    except BrowserNotFoundError as error:
        fallback = write_html(fig, path.with_suffix(".html"))
        raise BrowserNotFoundError(f"Could not write {path}: {error} The figure was written "
                                   f"as HTML to {fallback} instead.") from error
