"""The location of a person or an item in bAbI-style stories (tasks 1 to 3), generated or loaded."""

from __future__ import annotations

import functools
import logging
import random
from collections import Counter
from dataclasses import dataclass, field

from .babi import DROP_VERBS, MOVE_VERBS, TAKE_VERBS, Statement, Story, World, parse_babi, \
    parse_statement
from .base import BehaviourQuery, Task, TextExample
from .files import drop_sparse_steps, existing_file
from .text import TextBuilder

logger = logging.getLogger(__name__)

PEOPLE = ("Mary", "John", "Sandra", "Daniel")
ITEMS = ("football", "apple", "milk")
# The bAbI places, with "garage" for "hallway", which SmolLM2 splits into two tokens: a
# counterfactual that swaps one place for another then keeps every token position.
PLACES = ("bathroom", "kitchen", "office", "bedroom", "garden", "garage")
DEFAULT_ANSWER_PREFIX = " Answer: the"


@dataclass
class Location(Task):
    """Track where one person (bAbI task 1) or one item (task 2) is.

    Generated stories (``path`` empty) follow the tracked entity through ``n_updates``
    moves, each followed by ``n_distractors`` moves of other people. In task 2 a person
    picks the item up and carries it. Before each later move, with ``handover_rate``, the
    carrier drops the item and someone else picks it up. A loaded bAbI file (tasks 1 to 3) keeps its
    statements as the text, drops the question lines and turns them into behaviour queries.

    Readouts sit on the period of every statement from the one that first places the
    entity, labelled with its location. The step counts the statements so far that set its
    location (see :class:`~depthprobe.tasks.babi.World`). The text does not name the
    tracked entity, so a probe learns one entity's location: ``entity`` picks it.
    """

    name = "location"
    summary = "bAbI tasks 1-3: where a person or carried item is; generated or loaded"
    state_variable = "the current location of the tracked person or item"
    step_meaning = "number of statements so far that set the entity's location"
    readout_meaning = "the period of each statement, from the entity's first placement on"
    steps_option = "n_updates"

    path: str = field(default="", metadata={
        "help": "bAbI task 1-3 file (e.g. qa1_single-supporting-fact_test.txt); empty "
                "generates stories"})
    entity: str = field(default="", metadata={
        "help": "tracked person or item; empty: Mary (generated task 1), football "
                "(generated task 2), or the entity most questions of the file ask about; "
                "'*' tracks every entity a question asks about, one example each"})
    babi_task: int = field(default=1, metadata={
        "help": "generated stories: 1 tracks a person, 2 an item carried by people"})
    n_stories: int = field(default=300, metadata={"help": "generated stories"})
    n_updates: int = field(default=6, metadata={
        "help": "generated stories: moves of the tracked entity (steps 1..n_updates)"})
    n_distractors: int = field(default=1, metadata={
        "help": "generated stories: moves of other people after each update"})
    handover_rate: float = field(default=0.3, metadata={
        "help": "generated task 2: chance that the item changes hands before a move"})
    min_readouts: int = field(default=20, metadata={
        "help": "drop the readouts of steps with fewer readouts than this in all (a "
                "probe per step needs enough); 0 keeps all"})
    seed: int = field(default=0, metadata={"help": "random seed of the generator"})
    answer_prefix: str = field(default=DEFAULT_ANSWER_PREFIX, metadata={
        "help": "text after a question that the model continues with the place"})

    # ----------------------------------------------------------------- options
    def check(self) -> None:
        if self.path:
            self._check_file_entity()
            return
        if self.babi_task not in (1, 2):
            raise ValueError(f"babi_task must be 1 or 2 for generated stories, got "
                             f"{self.babi_task}; load task 3 from a file with path=.")
        allowed = PEOPLE if self.babi_task == 1 else ITEMS
        if self.entity and self.entity not in allowed:
            raise ValueError(f"entity {self.entity!r} is not in generated task "
                             f"{self.babi_task}; choose one of {', '.join(allowed)}.")
        for option in ("n_stories", "n_updates"):
            if getattr(self, option) < 1:
                raise ValueError(f"{option} must be 1 or more, got {getattr(self, option)}.")
        if self.n_distractors < 0:
            raise ValueError(f"n_distractors must be 0 or more, got {self.n_distractors}.")
        if not 0.0 <= self.handover_rate <= 1.0:
            raise ValueError(f"handover_rate must be between 0 and 1, got "
                             f"{self.handover_rate}.")

    @property
    def class_names(self) -> list[str]:
        if not self.path:
            return list(PLACES)
        return self._places

    # ------------------------------------------------------------------ loader
    @functools.cached_property
    def _stories(self) -> list[Story]:
        return parse_babi(existing_file(self.path, "path", "bAbI file"))

    @functools.cached_property
    def _places(self) -> list[str]:
        places = {s.target for story in self._stories for s in story.statements
                  if s.kind == "move"}
        places |= {q.answer for story in self._stories for q in story.questions}
        return sorted(places)

    def _check_file_entity(self) -> None:
        """Parse and check the whole file, then check that ``entity`` occurs in it."""
        stories = self._stories
        if self.entity in ("", "*"):
            return
        known = {s.actor for story in stories for s in story.statements}
        known |= {s.target for story in stories for s in story.statements if s.kind != "move"}
        if self.entity not in known:
            raise ValueError(f"entity {self.entity!r} does not occur in {self.path}; choose "
                             f"one of {', '.join(sorted(known))}, '*' or leave it empty.")

    def _tracked_entities(self, story: Story) -> list[str]:
        if self.entity == "*":
            return list(dict.fromkeys(q.entity for q in story.questions))
        return [self._file_entity]

    @functools.cached_property
    def _file_entity(self) -> str:
        if self.entity:
            return self.entity
        counts = Counter(q.entity for story in self._stories for q in story.questions)
        if not counts:
            raise ValueError(f"The bAbI file {self.path!r} has no questions to choose the "
                             f"tracked entity from; set entity=NAME.")
        entity = min(counts, key=lambda name: (-counts[name], name))
        logger.info("Tracking %r, the entity most questions of %s ask about; set "
                    "entity=NAME to track another.", entity, self.path)
        return entity

    # ------------------------------------------------------------------ shared
    def render(self, statements: list[Statement], entity: str, group,
               meta: dict | None = None) -> TextExample:
        """Join statements into a text with a readout on each period once ``entity`` is placed."""
        builder = TextBuilder()
        world = World()
        places = self.class_names
        for index, statement in enumerate(statements):
            builder.add(statement.text if index == 0 else " " + statement.text)
            world.apply(statement)
            place = world.location(entity)
            if place is not None:
                builder.mark_end(places.index(place), world.updates[entity])
        meta = {"entity": entity, **(meta or {}),
                "statements": [s.text for s in statements]}
        return TextExample(builder.text, builder.readouts, group, meta)

    def _question(self, entity: str) -> str:
        return f"Where is {'the ' if entity in ITEMS else ''}{entity}?"

    # --------------------------------------------------------------- generator
    def _move(self, rng: random.Random, person: str, place: str) -> Statement:
        return Statement(f"{person} {rng.choice(MOVE_VERBS)} the {place}.", "move", person,
                         place)

    def _handle(self, rng: random.Random, person: str, item: str, verbs) -> Statement:
        there = rng.choice(("", " there"))
        kind = "take" if verbs is TAKE_VERBS else "drop"
        return Statement(f"{person} {rng.choice(verbs)} the {item}{there}.", kind, person, item)

    def _generate(self, rng: random.Random, entity: str) -> list[Statement]:
        """Draw a story in which ``entity`` gets ``n_updates`` location updates."""
        statements: list[Statement] = []
        where = {person: None for person in PEOPLE}

        def move(person: str, place: str) -> None:
            statements.append(self._move(rng, person, place))
            where[person] = place

        def distract(carrier: str) -> None:
            for _ in range(self.n_distractors):
                person = rng.choice([p for p in PEOPLE if p != carrier])
                move(person, rng.choice([p for p in PLACES if p != where[person]]))

        if self.babi_task == 1:
            for _ in range(self.n_updates):
                move(entity, rng.choice([p for p in PLACES if p != where[entity]]))
                distract(entity)
            return statements

        carrier = rng.choice(PEOPLE)
        move(carrier, rng.choice(PLACES))
        statements.append(self._handle(rng, carrier, entity, TAKE_VERBS))
        distract(carrier)
        for _ in range(self.n_updates - 1):
            if rng.random() < self.handover_rate:
                statements.append(self._handle(rng, carrier, entity, DROP_VERBS))
                place = where[carrier]
                carrier = rng.choice([p for p in PEOPLE if p != carrier])
                if where[carrier] != place:
                    move(carrier, place)
                statements.append(self._handle(rng, carrier, entity, TAKE_VERBS))
            move(carrier, rng.choice([p for p in PLACES if p != where[carrier]]))
            distract(carrier)
        return statements

    def _counterfactual(self, rng: random.Random, statements: list[Statement], entity: str,
                        group) -> TextExample:
        """Change the place of the move behind the entity's last update.

        That move is the entity's own (task 1) or its carrier's (task 2; for a pick-up,
        the carrier's move before it), so the entity's final location differs.
        """
        world = World()
        last = None
        for index, statement in enumerate(statements):
            count = world.updates[entity]
            world.apply(statement)
            if world.updates[entity] > count:
                last = index
        while statements[last].kind != "move":
            actor = statements[last].actor
            last = max(i for i in range(last) if statements[i].kind == "move"
                       and statements[i].actor == actor)

        old = statements[last]
        mover_before = [s.target for s in statements[:last]
                        if s.kind == "move" and s.actor == old.actor]
        avoid = {old.target, *mover_before[-1:]}
        place = rng.choice([p for p in PLACES if p not in avoid])
        changed = list(statements)
        changed[last] = Statement(old.text.replace(f" the {old.target}.", f" the {place}."),
                                  "move", old.actor, place)
        return self.render(changed, entity, group, {"changed_step": world.updates[entity]})

    # -------------------------------------------------------------- interface
    def text_examples(self) -> list[TextExample]:
        self.check()
        if self.path:
            examples = [self.render(story.statements, entity, story.index,
                                    {"first_line": story.first_line})
                        for story in self._stories for entity in self._tracked_entities(story)]
            return drop_sparse_steps(examples, self.min_readouts, logger)

        entity = self.entity or ("Mary" if self.babi_task == 1 else "football")
        rng = random.Random(self.seed)
        examples = []
        for index in range(self.n_stories):
            statements = self._generate(rng, entity)
            example = self.render(statements, entity, index)
            example.counterfactual = self._counterfactual(rng, statements, entity, index)
            examples.append(example)
        return examples

    def behaviour_queries(self, example: TextExample) -> list[BehaviourQuery]:
        entity = example.meta["entity"]
        places = self.class_names
        choices = [f" {place}" for place in places]
        if not self.path:
            question = " " + self._question(entity) + self.answer_prefix
            return [BehaviourQuery(example.text[: r.span.end] + question, choices, r.label,
                                   r.step, example.group) for r in example.readouts]

        story = self._stories[example.group]
        statements = [s.text for s in story.statements]
        queries = []
        for question in story.questions:
            if question.entity != entity:
                continue
            world = World()
            for statement in story.statements[: question.n_statements]:
                world.apply(statement)
            prompt = " ".join(statements[: question.n_statements]) + " " + question.text
            queries.append(BehaviourQuery(prompt + self.answer_prefix, choices,
                                          places.index(question.answer),
                                          world.updates[entity], example.group))
        return queries

    def shortcuts(self, example: TextExample) -> dict[str, list[int | None]]:
        places = self.class_names
        entity = example.meta["entity"]
        last_named: dict[int, int] = {}
        first: dict[int, int] = {}
        world = World()
        named = None
        end = -1
        for text in example.meta["statements"]:
            end += len(text) + 1  # each statement is joined to the next by one space
            statement = parse_statement(text)
            world.apply(statement)
            if statement.kind == "move":
                named = places.index(statement.target)
            if world.location(entity) is not None:
                last_named[end] = named
                first[end] = places.index(world.history[entity][0])
        ends = [readout.span.end for readout in example.readouts]
        return {"last place named": [last_named[end] for end in ends],
                "first place of the entity": [first[end] for end in ends]}
