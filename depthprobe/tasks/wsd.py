"""Readers for two word-sense data formats: Word-in-Context (WiC) and CoarseWSD-20.

WiC (Pilehvar and Camacho-Collados 2019): ``NAME.data.txt`` has lines
``lemma<TAB>N or V<TAB>i-j<TAB>sentence1<TAB>sentence2``, where ``i`` and ``j`` are the
0-based positions of the target word in each space-tokenized sentence, and
``NAME.gold.txt`` has ``T`` (same sense) or ``F`` on the matching line.

CoarseWSD-20 (Loureiro et al. 2021): a folder per word contains ``classes_map.txt`` (a JSON
object from sense id to sense name), ``SPLIT.data.txt`` with lines
``position<TAB>lowercased tokenized sentence`` and ``SPLIT.gold.txt`` with one sense id
per line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .files import ProblemLog, existing_file, read_lines


@dataclass(frozen=True)
class WicPair:
    """One WiC pair: a lemma used in two space-tokenized sentences."""

    line: int
    lemma: str
    pos: str
    positions: tuple[int, int]
    sentences: tuple[str, str]
    same_sense: bool


@dataclass(frozen=True)
class SenseExample:
    """One CoarseWSD sentence with the position of its ambiguous word and the sense id."""

    line: int
    position: int
    sentence: str
    sense: str


def gold_path(data_path: Path) -> Path:
    """Return the gold file next to a ``NAME.data.txt`` file: ``NAME.gold.txt``."""
    if not data_path.name.endswith(".data.txt"):
        raise ValueError(f"{str(data_path)!r} does not end in .data.txt, so its gold file "
                         f"cannot be found; pass the NAME.data.txt file.")
    return data_path.with_name(data_path.name[: -len(".data.txt")] + ".gold.txt")


def _paired_lines(data_path: Path, problems: ProblemLog) -> tuple[list[str], list[str]]:
    gold = existing_file(str(gold_path(data_path)), "path", "gold file")
    data_lines, gold_lines = read_lines(data_path), read_lines(gold)
    while data_lines and not data_lines[-1].strip():
        data_lines.pop()
    while gold_lines and not gold_lines[-1].strip():
        gold_lines.pop()
    if len(data_lines) != len(gold_lines):
        problems.add(min(len(data_lines), len(gold_lines)) + 1, "gold",
                     f"{data_path.name} has {len(data_lines)} lines but {gold.name} has "
                     f"{len(gold_lines)}; the files must match line by line")
    return data_lines, gold_lines


def read_wic(data_path: Path) -> list[WicPair]:
    """Read a WiC data file and its gold file, checking every line.

    Raises :class:`~depthprobe.tasks.files.DataFileError` listing each malformed line.
    """
    problems = ProblemLog(data_path)
    data_lines, gold_lines = _paired_lines(data_path, problems)
    pairs = []
    for number, (raw, gold) in enumerate(zip(data_lines, gold_lines), start=1):
        fields = raw.split("\t")
        if len(fields) != 5:
            problems.add(number, "(line)", f"needs 5 tab-separated fields (lemma, part of "
                                           f"speech, positions, sentence1, sentence2), got "
                                           f"{len(fields)}")
            continue
        lemma, pos, positions, first, second = fields
        if not lemma.strip():
            problems.add(number, "lemma", "is empty")
        if pos not in ("N", "V"):
            problems.add(number, "part of speech", f"must be N or V, got {pos!r}")
        parts = positions.split("-")
        if len(parts) != 2 or not all(part.isdigit() for part in parts):
            problems.add(number, "positions", f"must be 'i-j' with two 0-based word "
                                              f"positions, got {positions!r}")
            continue
        indices = (int(parts[0]), int(parts[1]))
        for name, sentence, index in (("sentence1", first, indices[0]),
                                      ("sentence2", second, indices[1])):
            if index >= len(sentence.split(" ")):
                problems.add(number, "positions", f"position {index} is past the end of "
                                                  f"{name} ({len(sentence.split(' '))} words)")
        if gold.strip() not in ("T", "F"):
            problems.add(number, "gold", f"line {number} of the gold file must be T or F, "
                                         f"got {gold.strip()!r}")
            continue
        pairs.append(WicPair(number, lemma, pos, indices, (first, second), gold.strip() == "T"))
    problems.raise_if_any()
    return pairs


def read_coarse_wsd(data_path: Path) -> tuple[dict[str, str], list[SenseExample]]:
    """Read a CoarseWSD-20 split: its ``classes_map.txt``, data file and gold file.

    Returns the sense names by id and the examples. Raises
    :class:`~depthprobe.tasks.files.DataFileError` listing each malformed line.
    """
    classes_file = existing_file(str(data_path.with_name("classes_map.txt")), "path",
                                 "classes_map.txt beside the data file")
    try:
        classes = json.loads(classes_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{classes_file} is not valid JSON ({error.msg} at line "
                         f"{error.lineno}); it must map sense ids to sense names.") from None
    if not isinstance(classes, dict) or not classes:
        raise ValueError(f"{classes_file} must hold a non-empty JSON object from sense id "
                         f"to sense name.")
    classes = {str(key): str(value) for key, value in classes.items()}

    problems = ProblemLog(data_path)
    data_lines, gold_lines = _paired_lines(data_path, problems)
    examples = []
    for number, (raw, gold) in enumerate(zip(data_lines, gold_lines), start=1):
        position, tab, sentence = raw.partition("\t")
        if not tab or not sentence.strip():
            problems.add(number, "(line)", "must be 'position<TAB>sentence'")
            continue
        if not position.isdigit():
            problems.add(number, "position", f"must be a 0-based word position, got "
                                             f"{position!r}")
            continue
        if int(position) >= len(sentence.split(" ")):
            problems.add(number, "position", f"{position} is past the end of the sentence "
                                             f"({len(sentence.split(' '))} words)")
            continue
        if gold.strip() not in classes:
            problems.add(number, "gold", f"line {number} of the gold file contains "
                                         f"{gold.strip()!r}, which is not a sense id of "
                                         f"classes_map.txt ({', '.join(classes)})")
            continue
        examples.append(SenseExample(number, int(position), sentence, gold.strip()))
    problems.raise_if_any()
    return classes, examples
