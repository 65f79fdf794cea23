"""Shared checks for task loaders: find the file, collect every malformed line, then raise.

A loader reads the whole file and records one :class:`LineProblem` per malformed field
before it raises, so that a user fixes every line in one pass and nothing downstream
runs on a partly valid file.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# The error message lists this many problems and counts the rest.
MAX_LISTED_PROBLEMS = 20


@dataclass(frozen=True)
class LineProblem:
    """One malformed field of one line of a data file."""

    path: str
    line: int  # 1-based line number
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}, line {self.line}, field {self.field}: {self.message}"


class DataFileError(ValueError):
    """A data file with malformed lines; ``problems`` lists every one of them."""

    def __init__(self, path: str, problems: list[LineProblem]) -> None:
        self.path = path
        self.problems = list(problems)
        listed = "\n".join(f"  {problem}" for problem in problems[:MAX_LISTED_PROBLEMS])
        more = len(problems) - MAX_LISTED_PROBLEMS
        tail = f"\n  ... and {more} more" if more > 0 else ""
        super().__init__(
            f"{path} has {len(problems)} malformed field(s); fix them and load again:\n"
            f"{listed}{tail}"
        )


class ProblemLog:
    """Collects the problems of one file and raises them together."""

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self.problems: list[LineProblem] = []

    def add(self, line: int, field: str, message: str) -> None:
        self.problems.append(LineProblem(self.path, line, field, message))

    def __bool__(self) -> bool:
        return bool(self.problems)

    def raise_if_any(self) -> None:
        """Raise :class:`DataFileError` when any problem was recorded."""
        if self.problems:
            raise DataFileError(self.path, self.problems)


def existing_file(path: str, option: str = "path", what: str = "data file") -> Path:
    """Return ``path`` as a ``Path``; raise ``FileNotFoundError`` when it is no file."""
    if not path:
        raise ValueError(f"Task option {option} is empty; set {option}=FILE to the {what}.")
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise FileNotFoundError(
            f"The {what} {str(resolved)!r} (task option {option}) does not exist or is "
            f"not a file; check the path."
        )
    return resolved


def data_file_in(path: str, suffix: str, option: str = "path", what: str = "data file") -> Path:
    """Resolve ``path`` to one file ending in ``suffix``, or to the only such file in a folder.

    Raises ``FileNotFoundError`` when nothing matches and ``ValueError`` when a folder contains
    several candidates, listing them so that the user can pass one.
    """
    if not path:
        raise ValueError(f"Task option {option} is empty; set {option}= to the {what}.")
    resolved = Path(path).expanduser()
    if resolved.is_dir():
        matches = sorted(resolved.glob(f"*{suffix}"))
        if not matches:
            raise FileNotFoundError(
                f"The folder {str(resolved)!r} (task option {option}) contains no *{suffix} "
                f"file; point {option} at the {what}."
            )
        if len(matches) > 1:
            names = ", ".join(match.name for match in matches)
            raise ValueError(
                f"The folder {str(resolved)!r} contains several *{suffix} files ({names}); "
                f"set {option} to one of them."
            )
        return matches[0]
    return existing_file(path, option, what)


def read_lines(path: Path) -> list[str]:
    """Read a UTF-8 text file as lines without their line endings."""
    return path.read_text(encoding="utf-8").splitlines()


def drop_sparse_steps(examples: list, min_readouts: int, logger) -> list:
    """Drop the readouts of steps that have fewer than ``min_readouts`` readouts in all.

    Loaded files reach high steps in a few stories only, too few for a per-step probe.
    Examples without readouts are dropped too, whatever ``min_readouts`` is; ``logger``
    records the dropped steps.
    """
    counts = Counter(readout.step for example in examples for readout in example.readouts)
    sparse = sorted(step for step, count in counts.items() if count < min_readouts)
    kept = []
    for example in examples:
        example.readouts = [r for r in example.readouts if r.step not in sparse]
        if example.readouts:
            kept.append(example)
    if sparse:
        logger.info("Dropped the readouts of steps %s (%d readouts), which have fewer than %d "
                    "each; set min_readouts=0 to keep them.", sparse,
                    sum(counts[step] for step in sparse), min_readouts)
    return kept
