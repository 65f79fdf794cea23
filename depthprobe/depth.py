"""Resolution depth per step, the cascade's slope and its exhaustion step.

The threshold rule (:class:`DepthRule`), for one step with per-layer scores ``s[l]`` and
chance level ``c``:

* the step *has a depth* only if the best layer beats chance by a clear margin:
  ``max(s) - c >= min_margin``; otherwise its depth is ``None``;
* the threshold is ``c + relative * (max(s) - c)``, a fixed fraction of the way from
  chance to the best layer;
* the resolution depth ``d(t)`` is the smallest layer ``l`` whose score and the scores of
  the next ``persist - 1`` layers (all deeper layers when ``persist`` is ``None``) are at
  or above the threshold. Layers past the last one count as passing, so a state that
  resolves in the top few layers still gets a depth.

Intervals come from a bootstrap over stories (groups): stories are drawn with
replacement, each step's layer curve is recomputed from the per-readout scores of the
drawn stories, and the rule is applied again. The cascade slope is the least-squares
slope of ``d(t)`` against ``t`` over steps that have a depth, in layers per step; the
exhaustion step is the first step at which no layer resolves the state.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

DEPTH_COLUMNS = ["method", "step", "depth", "depth_low", "depth_high", "resolved_fraction",
                 "best_layer", "best_score", "chance", "threshold"]


@dataclass(frozen=True)
class DepthRule:
    """Thresholds of the resolution-depth rule (see the module docstring)."""

    relative: float = 0.8  # fraction of the way from chance to the best layer
    min_margin: float = 0.1  # best layer minus chance needed for a step to have a depth
    persist: int | None = 3  # layers that must stay at or above the threshold; None: all
    n_boot: int = 1000  # bootstrap resamples of stories
    confidence: float = 0.95  # width of the bootstrap intervals
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 < self.relative <= 1:
            raise ValueError(f"relative must lie in (0, 1], got {self.relative}.")
        if self.min_margin < 0:
            raise ValueError(f"min_margin must be 0 or more, got {self.min_margin}.")
        if self.persist is not None and self.persist < 1:
            raise ValueError(f"persist must be 1 or more (or None for all), got {self.persist}.")
        if self.n_boot < 0:
            raise ValueError(f"n_boot must be 0 or more, got {self.n_boot}.")
        if not 0 < self.confidence < 1:
            raise ValueError(f"confidence must lie in (0, 1), got {self.confidence}.")


_TOLERANCE = 1e-9


def resolution_depth(curve: np.ndarray, chance: float, rule: DepthRule = DepthRule()
                     ) -> int | None:
    """Apply the threshold rule to one layer curve; return the layer index or ``None``.

    ``curve[i]`` is the score of layer ``i``, for consecutive layers ``0..L``.
    """
    curve = np.asarray(curve, dtype=float)
    best = float(np.nanmax(curve))
    # Scores are shares of readouts, so exact ties such as 0.6667 - 0.5667 = 0.1 must
    # not fall below a limit through float rounding.
    if best - chance < rule.min_margin - _TOLERANCE:
        return None
    above = curve >= chance + rule.relative * (best - chance) - _TOLERANCE
    window = len(curve) if rule.persist is None else rule.persist
    for layer in range(len(curve)):
        if above[layer: layer + window].all():
            return layer
    return None


def _curves(readouts: pd.DataFrame):
    """Per-(group, step, layer) sums and counts of per-readout scores, as dense arrays."""
    groups, group_index = np.unique(readouts["group"].astype(str), return_inverse=True)
    steps, step_index = np.unique(readouts["step"], return_inverse=True)
    layers, layer_index = np.unique(readouts["layer"], return_inverse=True)
    sums = np.zeros((len(groups), len(steps), len(layers)))
    counts = np.zeros_like(sums)
    np.add.at(sums, (group_index, step_index, layer_index), readouts["score"].to_numpy())
    np.add.at(counts, (group_index, step_index, layer_index), 1.0)
    return sums, counts, steps, layers


def _slope(steps: np.ndarray, depths: list[int | None]) -> float:
    points = [(s, d) for s, d in zip(steps, depths) if d is not None]
    if len(points) < 2:
        return float("nan")
    x, y = np.array(points, dtype=float).T
    return float(np.polyfit(x, y, 1)[0])


def _exhaustion(steps: np.ndarray, depths: list[int | None]) -> int | None:
    for step, depth in zip(steps, depths):
        if depth is None:
            return int(step)
    return None


@dataclass
class Cascade:
    """Resolution depth per step for one method, with the cascade's headline numbers."""

    method: str
    table: pd.DataFrame  # one row per step, columns DEPTH_COLUMNS
    slope: float  # layers per step
    slope_low: float
    slope_high: float
    exhaustion_step: int | None  # first step with no depth; None if every step has one
    rule: DepthRule

    def summary(self) -> dict:
        """Return the headline numbers as plain values, for manifests and printing."""
        return {"method": self.method, "slope": self.slope, "slope_low": self.slope_low,
                "slope_high": self.slope_high, "exhaustion_step": self.exhaustion_step,
                "rule": asdict(self.rule)}


def cascade(readouts: pd.DataFrame, chance: dict[int, float], method: str,
            rule: DepthRule = DepthRule()) -> Cascade:
    """Compute ``d(t)`` with bootstrap intervals, the slope and the exhaustion step.

    ``readouts`` is a per-readout scores table (one method); ``chance`` maps each step to
    its chance level. Layers must be consecutive (the rule reads neighbouring layers).
    """
    readouts = readouts[readouts["method"] == method]
    if readouts.empty:
        raise ValueError(f"The per-readout table has no rows for method {method!r}.")
    sums, counts, steps, layers = _curves(readouts)
    if not np.array_equal(layers, np.arange(layers[0], layers[0] + len(layers))):
        raise ValueError(f"Depth needs consecutive layers, got {layers.tolist()}.")
    missing = [int(s) for s in steps if int(s) not in chance]
    if missing:
        raise ValueError(f"No chance level given for steps {missing}.")

    def depths_for(weights: np.ndarray) -> list[int | None]:
        total = np.einsum("g,gsl->sl", weights, sums)
        n = np.einsum("g,gsl->sl", weights, counts)
        curves = total / np.maximum(n, 1)
        out = []
        for k, step in enumerate(steps):
            depth = resolution_depth(curves[k], chance[int(step)], rule)
            out.append(None if depth is None else int(layers[depth]))
        return out

    n_groups = sums.shape[0]
    point = depths_for(np.ones(n_groups))
    rng = np.random.default_rng(rule.seed)
    boot = [depths_for(rng.multinomial(n_groups, np.full(n_groups, 1 / n_groups)).astype(float))
            for _ in range(rule.n_boot)]

    tail = (1 - rule.confidence) / 2 * 100
    full = (sums.sum(0) / np.maximum(counts.sum(0), 1))
    rows = []
    for k, step in enumerate(steps):
        drawn = np.array([b[k] for b in boot if b[k] is not None], dtype=float)
        low, high = (np.percentile(drawn, [tail, 100 - tail]) if len(drawn) else (np.nan, np.nan))
        if point[k] is None:
            # No interval around a depth that does not exist; resolved_fraction still says
            # how often a resample found one.
            low, high = np.nan, np.nan
        best = int(np.argmax(full[k]))
        c = chance[int(step)]
        rows.append(dict(method=method, step=int(step), depth=point[k], depth_low=low,
                         depth_high=high,
                         resolved_fraction=len(drawn) / len(boot) if boot else np.nan,
                         best_layer=int(layers[best]), best_score=float(full[k, best]),
                         chance=c, threshold=c + rule.relative * (full[k, best] - c)))
    table = pd.DataFrame(rows, columns=DEPTH_COLUMNS)
    table["depth"] = table["depth"].astype("Int64")

    slope = _slope(steps, point)
    slopes = np.array([_slope(steps, b) for b in boot])
    slopes = slopes[~np.isnan(slopes)]
    slope_low, slope_high = (np.percentile(slopes, [tail, 100 - tail]) if len(slopes)
                             else (np.nan, np.nan))
    # Adding 0.0 turns a negative zero into 0.0, so summaries never print "-0.00".
    return Cascade(method, table, slope, float(slope_low) + 0.0, float(slope_high) + 0.0,
                   _exhaustion(steps, point), rule)


def read_depths(path) -> pd.DataFrame:
    """Read a depth table written by a run."""
    table = pd.read_csv(path)
    missing = [c for c in DEPTH_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(f"{path} is not a depth table: it lacks the columns {missing}.")
    table["depth"] = table["depth"].astype("Int64")
    return table
