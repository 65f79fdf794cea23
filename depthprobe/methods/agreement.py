"""Agreement between methods on one run: depth per step side by side, and rank correlations.

For every pair of methods, the Spearman rank correlation of their depth curves ``d(t)``
is computed over the steps at which both have a depth. It is NaN when fewer than three
such steps exist or when either curve is constant there (a rank correlation is undefined
for a constant curve).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from ..depth import Cascade

MIN_STEPS = 3


@dataclass
class Agreement:
    """Depths per step side by side (``table``) and pairwise rank correlations (``pairs``).

    ``table`` has a ``step`` column and one ``depth_<method>`` column per method (empty
    where the method found no depth). ``pairs`` has one row per pair of methods:
    ``method_a``, ``method_b``, ``spearman``, ``n_steps`` (steps where both have a depth)
    and ``mean_difference`` (mean of ``d_b - d_a`` over those steps, in layers).
    """

    table: pd.DataFrame
    pairs: pd.DataFrame

    def summary(self) -> dict:
        """Return the pairwise correlations as plain values, for manifests."""
        return {f"{row.method_a} vs {row.method_b}": {
                    "spearman": None if np.isnan(row.spearman) else float(row.spearman),
                    "n_steps": int(row.n_steps),
                    "mean_difference": (None if np.isnan(row.mean_difference)
                                        else float(row.mean_difference))}
                for row in self.pairs.itertuples()}


def depth_agreement(cascades: dict[str, Cascade]) -> Agreement:
    """Put the methods' depth curves side by side and correlate every pair."""
    if not cascades:
        raise ValueError("No cascades given; run at least one method.")
    table = None
    for method, result in cascades.items():
        column = result.table[["step", "depth"]].rename(columns={"depth": f"depth_{method}"})
        table = column if table is None else table.merge(column, on="step", how="outer")
    table = table.sort_values("step", ignore_index=True)

    rows = []
    for first, second in combinations(cascades, 2):
        both = table[[f"depth_{first}", f"depth_{second}"]].dropna().astype(float)
        a, b = both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy()
        rho = np.nan
        if len(both) >= MIN_STEPS and np.ptp(a) > 0 and np.ptp(b) > 0:
            rho = float(spearmanr(a, b).statistic)
        rows.append(dict(method_a=first, method_b=second, spearman=rho, n_steps=len(both),
                         mean_difference=float(np.mean(b - a)) if len(both) else np.nan))
    pairs = pd.DataFrame(rows, columns=["method_a", "method_b", "spearman", "n_steps",
                                        "mean_difference"])
    return Agreement(table, pairs)


def agreement_lines(summary: dict) -> list[str]:
    """Format a manifest's agreement summary as lines of the printed run summary."""
    lines = ["agreement of the depth curves between methods (Spearman rank correlation over "
             "steps where both have a depth):"]
    for pair, values in summary.items():
        rho = "n/a" if values["spearman"] is None else f"{values['spearman']:.2f}"
        shift = ("" if values["mean_difference"] is None
                 else f", second deeper by {values['mean_difference']:.1f} layers on average")
        lines.append(f"  {pair}: rho = {rho} over {values['n_steps']} steps{shift}")
    return lines
