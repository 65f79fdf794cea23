"""The sense of an ambiguous word, read at the word and at the tokens after it."""

from __future__ import annotations

import functools
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..sites import Span
from .base import BehaviourQuery, Task, TextExample
from .files import data_file_in
from .text import TextBuilder, word_spans
from .wsd import SenseExample, WicPair, read_coarse_wsd, read_wic

SOURCES = ("dialog", "wic", "coarsewsd")


@dataclass(frozen=True)
class AmbiguousWord:
    """A word with two senses, the cue nouns that select each, and its dialog lines."""

    word: str
    senses: tuple[str, str]  # one-word names, also the behaviour query's answers
    cues: tuple[tuple[str, ...], tuple[str, ...]]  # cue nouns per sense, paired by index
    opener: str  # the question before the sentence with the word
    target: str  # the sentence with the word, without its tail and period
    question: str  # a later question whose text is the same for both senses


# Every cue noun is one token on both bundled tokenizers, so that swapping a noun for its
# partner of the other sense keeps every token position.
WORDS = {
    "bank": AmbiguousWord("bank", ("money", "river"),
                          (("wallet", "card", "cash", "coins"), ("rod", "canoe", "bait", "boat")),
                          "Where are you off to?", "I am heading to the bank",
                          "Is there an ATM there?"),
    "bass": AmbiguousWord("bass", ("fish", "music"),
                          (("rod", "bait", "boat", "net"), ("guitar", "amp", "drum", "speaker")),
                          "What are you up to?", "I want to look at the bass",
                          "Is it a big one?"),
}
CUE_SENTENCES = ("I took the day off work and packed my {noun}.",
                 "I found my old {noun} this morning.",
                 "My {noun} is ready to go.")
DISTRACTORS = ("The weather is lovely today.", "My sister called me last night.",
               "I had eggs for breakfast.", "The traffic was light this morning.",
               "I slept well last night.")
TAILS = ("", " right now", " after lunch", " this afternoon", " with my brother")
SPEAKERS = (("Anna", "Ben"), ("Kate", "Omar"), ("Lucy", "Paul"), ("Eva", "Sam"))


def _space_word_spans(sentence: str, offset: int) -> list[Span]:
    """Return the spans of the words of a space-tokenized sentence placed at ``offset``."""
    spans, start = [], offset
    for word in sentence.split(" "):
        spans.append(Span(start, start + len(word)))
        start += len(word) + 1
    return spans


@dataclass
class Polysemy(Task):
    """Read which sense an ambiguous word has, at the word and at the tokens after it.

    ``source=dialog`` generates short dialogs in the style of the "bank" example of
    "The topological trouble with transformers": a cue noun for one sense ("packed my
    rod"), ``n_distractors`` neutral sentences, the ambiguous word in a reply, and a
    later question. ``source=wic`` loads Word-in-Context pairs (sentence 1, a space,
    sentence 2), labelled with whether the word of sentence 2 has the sense of sentence 1.
    ``source=coarsewsd`` loads one CoarseWSD-20 split, labelled with the sense id.

    Readouts sit on the ambiguous word (step 0, in sentence 2 for WiC) and on each of the
    next ``n_after`` words or punctuation marks (step k for the k-th). In loaded files
    these are the data set's space-separated words. All readouts carry the sense, so that
    a probe shows from which layer later tokens can read it.
    """

    name = "polysemy"
    summary = "sense of an ambiguous word at the word and later tokens (dialogs, WiC, CoarseWSD)"
    state_variable = ("the sense of the ambiguous word (WiC: whether sentence 2 uses the "
                      "sense of sentence 1)")
    step_meaning = "words or punctuation marks since the ambiguous word (0 at the word)"
    readout_meaning = "the ambiguous word and each of the next n_after words or marks"
    steps_option = "n_after"

    source: str = field(default="dialog", metadata={
        "help": "'dialog' (generated), 'wic' (Word-in-Context) or 'coarsewsd' (CoarseWSD-20)"})
    path: str = field(default="", metadata={
        "help": "wic or coarsewsd: the NAME.data.txt file (its gold file beside it), or a "
                "folder holding exactly one"})
    word: str = field(default="bank", metadata={
        "help": f"dialog: the ambiguous word, one of {', '.join(WORDS)}"})
    n_after: int = field(default=8, metadata={"help": "readouts after the ambiguous word"})
    n_stories: int = field(default=300, metadata={"help": "dialog: number of dialogs"})
    n_distractors: int = field(default=1, metadata={
        "help": "dialog: neutral sentences between the cue and the ambiguous word"})
    seed: int = field(default=0, metadata={"help": "dialog: random seed of the generator"})

    def check(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {', '.join(SOURCES)}, got "
                             f"{self.source!r}.")
        if self.n_after < 0:
            raise ValueError(f"n_after must be 0 or more, got {self.n_after}.")
        if self.source == "wic":
            self._wic
        elif self.source == "coarsewsd":
            self._coarse
        else:
            self._check_dialog()

    def _check_dialog(self) -> None:
        if self.path:
            raise ValueError(f"path={self.path!r} is set but source=dialog generates its "
                             f"texts; set source=wic or source=coarsewsd to load it.")
        if self.word not in WORDS:
            raise ValueError(f"word must be one of {', '.join(WORDS)}, got {self.word!r}.")
        if self.n_stories < 1:
            raise ValueError(f"n_stories must be 1 or more, got {self.n_stories}.")
        if not 0 <= self.n_distractors <= len(DISTRACTORS):
            raise ValueError(f"n_distractors must be 0 to {len(DISTRACTORS)}, got "
                             f"{self.n_distractors}.")

    @property
    def class_names(self) -> list[str]:
        if self.source == "wic":
            return ["different sense", "same sense"]
        if self.source == "coarsewsd":
            return list(self._coarse[0].values())
        return [f"{self.word} ({sense})" for sense in WORDS[self.word].senses]

    # ----------------------------------------------------------------- loaders
    @functools.cached_property
    def _wic(self) -> list[WicPair]:
        return read_wic(data_file_in(self.path, ".data.txt", what="WiC data file"))

    @functools.cached_property
    def _coarse(self) -> tuple[dict[str, str], list[SenseExample]]:
        classes, examples = read_coarse_wsd(
            data_file_in(self.path, ".data.txt", what="CoarseWSD-20 data file"))
        ordered = dict(sorted(classes.items(), key=lambda kv: (not kv[0].isdigit(),
                                                               int(kv[0]) if kv[0].isdigit()
                                                               else 0, kv[0])))
        return ordered, examples

    def _mark_word_and_after(self, text: str, word: Span, after: list[Span],
                             label: int) -> list:
        builder = TextBuilder()
        builder.add(text)
        builder.mark(word, label, 0)
        for step, span in enumerate(after[: self.n_after], start=1):
            builder.mark(span, label, step)
        return builder.readouts

    def _space_tokenized(self, text: str, sentence: str, offset: int, index: int,
                         label: int) -> list:
        """Mark word ``index`` of a space-tokenized sentence and the sentence's later words.

        The later readouts sit on the data set's own words, because a word such as "n't"
        contains a punctuation mark that some tokenizers do not split off.
        """
        spans = _space_word_spans(sentence, offset)
        return self._mark_word_and_after(text, spans[index], spans[index + 1:], label)

    def _wic_example(self, pair: WicPair) -> TextExample:
        first, second = pair.sentences
        text = f"{first} {second}"
        readouts = self._space_tokenized(text, second, len(first) + 1, pair.positions[1],
                                         int(pair.same_sense))
        word = readouts[0].span
        meta = {"line": pair.line, "lemma": pair.lemma, "word": text[word.start:word.end]}
        return TextExample(text, readouts, pair.line, meta)

    def _coarse_example(self, example: SenseExample) -> TextExample:
        label = list(self._coarse[0]).index(example.sense)
        readouts = self._space_tokenized(example.sentence, example.sentence, 0,
                                         example.position, label)
        word = readouts[0].span
        meta = {"line": example.line, "word": example.sentence[word.start:word.end]}
        return TextExample(example.sentence, readouts, example.line, meta)

    # --------------------------------------------------------------- generator
    def render(self, speakers: tuple[str, str], cue: str, distractors: list[str], tail: str,
               sense: int, group) -> TextExample:
        """Write one dialog with readouts on the ambiguous word and the words after it."""
        entry = WORDS[self.word]
        first, second = speakers
        builder = TextBuilder()
        builder.add(f"{first}: {cue}")
        for sentence in distractors:
            builder.add(f" {sentence}")
        builder.add(f" {second}: {entry.opener} {first}:")
        word = builder.add_word(f" {entry.target}", entry.word)
        builder.add(f"{tail}. {second}: {entry.question}")
        text = builder.text
        readouts = self._mark_word_and_after(text, word, word_spans(text, word.end), sense)
        meta = {"cue": cue, "sense": entry.senses[sense], "word": entry.word}
        return TextExample(text, readouts, group, meta)

    def _dialogs(self) -> list[TextExample]:
        entry = WORDS[self.word]
        rng = random.Random(self.seed)
        examples = []
        for index in range(self.n_stories):
            sense = rng.randrange(2)
            cue_index = rng.randrange(len(entry.cues[sense]))
            template = rng.choice(CUE_SENTENCES)
            speakers = rng.choice(SPEAKERS)
            distractors = rng.sample(DISTRACTORS, self.n_distractors)
            tail = rng.choice(TAILS)

            cue = template.format(noun=entry.cues[sense][cue_index])
            example = self.render(speakers, cue, distractors, tail, sense, index)
            other_cue = template.format(noun=entry.cues[1 - sense][cue_index])
            example.counterfactual = self.render(speakers, other_cue, distractors, tail,
                                                 1 - sense, index)
            examples.append(example)
        return examples

    # -------------------------------------------------------------- interface
    def text_examples(self) -> list[TextExample]:
        self.check()
        if self.source == "wic":
            return [self._wic_example(pair) for pair in self._wic]
        if self.source == "coarsewsd":
            return [self._coarse_example(example) for example in self._coarse[1]]
        return self._dialogs()

    def behaviour_queries(self, example: TextExample) -> list[BehaviourQuery]:
        last = example.readouts[-1]
        if self.source == "wic":
            word = example.meta["word"]
            prompt = (f"{example.text} Question: is '{word}' used with the same meaning in "
                      f"both sentences? Answer:")
            return [BehaviourQuery(prompt, [" No", " Yes"], last.label, last.step,
                                   example.group)]
        if self.source == "coarsewsd":
            return []
        senses = WORDS[self.word].senses
        prompt = (f"{example.text} Question: is this {self.word} about {senses[0]} or "
                  f"{senses[1]}? Answer:")
        return [BehaviourQuery(prompt, [f" {sense}" for sense in senses], last.label,
                               last.step, example.group)]
