"""A higher/lower number-guessing dialog; the state is the interval still possible."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .base import BehaviourQuery, Task, TextExample
from .text import TextBuilder


@dataclass
class NumberGuess(Task):
    """Track the interval of numbers still consistent with the answers so far.

    A text reads "I am thinking of a number between 1 and 100. Is it 50? Higher. Is it
    75? Lower." The secret is uniform in ``low..high``; each guess is uniform in the
    interval still possible, never the secret itself, and the answer is truthful. A dialog
    stops early when only the secret is left. The period after each answer carries a
    readout labelled with the bucket of the interval's midpoint (``n_buckets`` equal
    ranges of ``low..high``); the step counts the answers. The counterfactual flips the
    last answer; it is ``None`` where the other side of the last guess contains no number.

    The behaviour query does not score the model's own next guess, because a number spans
    several tokens on the bundled tokenizers and a query is scored on one next-token
    choice. It asks the model to answer a guess outside the interval instead ("Is it 12?"
    after "Higher" at 40), where "Higher" or "Lower" follows from the interval alone.
    """

    name = "number-guess"
    summary = "higher/lower guessing dialog; the state is the interval still possible"
    state_variable = "the interval of numbers consistent with the answers, as a midpoint bucket"
    step_meaning = "number of answers so far, from 1"
    readout_meaning = "the period after each 'Higher' or 'Lower'"
    steps_option = "n_guesses"

    n_stories: int = field(default=300, metadata={"help": "number of dialogs"})
    n_guesses: int = field(default=6, metadata={"help": "guesses per dialog (steps)"})
    low: int = field(default=1, metadata={"help": "smallest number of the game"})
    high: int = field(default=100, metadata={"help": "largest number of the game"})
    n_buckets: int = field(default=4, metadata={
        "help": "equal ranges of low..high that label the interval's midpoint"})
    seed: int = field(default=0, metadata={"help": "random seed of the generator"})

    def check(self) -> None:
        if self.low < 0:
            raise ValueError(f"low must be 0 or more, got {self.low}.")
        if self.high - self.low < 3:
            raise ValueError(f"high must exceed low by 3 or more, got low={self.low}, "
                             f"high={self.high}.")
        if not 2 <= self.n_buckets <= self.high - self.low + 1:
            raise ValueError(f"n_buckets must be 2 to high - low + 1 = "
                             f"{self.high - self.low + 1}, got {self.n_buckets}.")
        for option in ("n_stories", "n_guesses"):
            if getattr(self, option) < 1:
                raise ValueError(f"{option} must be 1 or more, got {getattr(self, option)}.")

    @property
    def class_names(self) -> list[str]:
        size = self.high - self.low + 1
        edges = [self.low + size * k / self.n_buckets for k in range(self.n_buckets + 1)]
        return [f"midpoint in [{a:g}, {b:g})" for a, b in zip(edges, edges[1:])]

    def bucket(self, lo: int, hi: int) -> int:
        """Return the bucket of the midpoint of ``lo..hi``."""
        midpoint = (lo + hi) / 2
        size = self.high - self.low + 1
        return min(self.n_buckets - 1, int((midpoint - self.low) * self.n_buckets / size))

    def render(self, guesses: list[int], answers: list[str], group,
               secret: int | None = None) -> TextExample:
        """Write a dialog from its guesses and answers; readouts label the interval."""
        builder = TextBuilder()
        builder.add(f"I am thinking of a number between {self.low} and {self.high}.")
        lo, hi = self.low, self.high
        intervals = []
        for step, (guess, answer) in enumerate(zip(guesses, answers), start=1):
            if answer == "Higher":
                lo = max(lo, guess + 1)
            else:
                hi = min(hi, guess - 1)
            intervals.append([lo, hi])
            builder.add(f" Is it {guess}? {answer}.")
            builder.mark_end(self.bucket(lo, hi), step)
        meta = {"guesses": list(guesses), "answers": list(answers), "intervals": intervals,
                "secret": secret}
        return TextExample(builder.text, builder.readouts, group, meta)

    def _play(self, rng: random.Random) -> tuple[int, list[int], list[str]]:
        secret = rng.randint(self.low, self.high)
        lo, hi = self.low, self.high
        guesses, answers = [], []
        while len(guesses) < self.n_guesses and lo < hi:
            guess = rng.choice([n for n in range(lo, hi + 1) if n != secret])
            guesses.append(guess)
            answers.append("Higher" if secret > guess else "Lower")
            lo, hi = (guess + 1, hi) if secret > guess else (lo, guess - 1)
        return secret, guesses, answers

    def text_examples(self) -> list[TextExample]:
        self.check()
        rng = random.Random(self.seed)
        examples = []
        for index in range(self.n_stories):
            secret, guesses, answers = self._play(rng)
            example = self.render(guesses, answers, index, secret)

            # Flip the last answer when the other side of the last guess is not empty;
            # " Higher" and " Lower" are one token each on the bundled tokenizers.
            lo, hi = (example.meta["intervals"][-2] if len(guesses) > 1
                      else [self.low, self.high])
            last = guesses[-1]
            flipped = "Lower" if answers[-1] == "Higher" else "Higher"
            if (flipped == "Lower" and last > lo) or (flipped == "Higher" and last < hi):
                example.counterfactual = self.render(guesses, answers[:-1] + [flipped], index)
                example.counterfactual.meta["changed_step"] = len(guesses)
            examples.append(example)
        return examples

    def behaviour_queries(self, example: TextExample) -> list[BehaviourQuery]:
        queries = []
        for readout, (lo, hi) in zip(example.readouts, example.meta["intervals"]):
            outside = [n for n in range(self.low, self.high + 1) if not lo <= n <= hi]
            rng = random.Random(f"{self.seed}-{example.group}-{readout.step}")
            probe = rng.choice(outside)
            prompt = example.text[: readout.span.end] + f" Is it {probe}?"
            answer = 0 if probe < lo else 1
            queries.append(BehaviourQuery(prompt, [" Higher", " Lower"], answer, readout.step,
                                          example.group))
        return queries

    def shortcuts(self, example: TextExample) -> dict[str, list[int | None]]:
        guesses, answers = example.meta["guesses"], example.meta["answers"]
        last_guess = [self.bucket(g, g) for g in guesses]
        last_answer = [self.bucket(g + 1, self.high) if a == "Higher"
                       else self.bucket(self.low, g - 1) for g, a in zip(guesses, answers)]
        return {"bucket of the last guess": last_guess, "last answer alone": last_answer}
