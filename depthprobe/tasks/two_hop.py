"""Two-hop questions over made-up facts, in the style of "Hopping Too Late" (Biran et al. 2024)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from .base import BehaviourQuery, Task, TextExample
from .text import TextBuilder

FIRST_NAMES = ("Ann", "Eva", "Lucy", "Nina", "Rosa", "Emma", "Kate", "Iris", "Ruth", "Vera",
               "Tom", "Sam", "Ben", "Mark", "Paul", "Hugo", "Owen", "Carl", "Otto", "Finn")
SURNAMES = ("Lee", "Hart", "Moss", "Cole", "Reed", "Wood", "Stone", "Fox", "Hill", "Gray",
            "Price", "Ford", "King", "Bell", "Lane", "Park", "Ross", "Shaw", "West", "Long")
# Bridge entities: a fixed pool, so that the bridge at the first hop is a class label.
BRIDGES = ("Tom Hart", "Eva Moss", "Sam Cole", "Nina Reed", "Ben Wood", "Rosa Stone",
           "Mark Fox", "Iris Hill")
CITIES = ("Oslo", "Lima", "Paris", "Rome", "Cairo", "Delhi", "Tokyo", "Berlin")
RELATIONS = ("spouse", "mother", "father", "boss", "neighbour")


@dataclass
class TwoHop(Task):
    """Resolve a two-hop query: first the bridge entity, then the bridge's birthplace.

    A text lists ``n_facts`` first-hop facts ("The spouse of Ann Lee is Tom Hart.") and
    then the matching second-hop facts ("Tom Hart was born in Oslo.") in another order,
    with made-up names, and ends with a query that skips the bridge: "The spouse of Ann
    Lee was born in". Two readouts sit in the query: the last token of the subject's
    name, labelled with the bridge entity (step 1), and the final "in", labelled with the
    answer city (step 2). Labels index one list: the bridge names, then the cities. The
    counterfactual points the queried first-hop fact at another chain's bridge.
    """

    name = "two-hop"
    summary = "two-hop facts with made-up names; bridge entity, then the answer, in the query"
    state_variable = "the bridge entity at the first hop, then the answer city at the query"
    step_meaning = "hop: 1 at the subject's name in the query, 2 at the query's last token"
    readout_meaning = "the last token of the queried subject's name, and the final 'in'"

    n_stories: int = field(default=300, metadata={"help": "number of texts"})
    n_facts: int = field(default=3, metadata={
        "help": f"fact chains per text, 1 to {len(BRIDGES)} (the others are distractors)"})
    seed: int = field(default=0, metadata={"help": "random seed of the generator"})

    @property
    def class_names(self) -> list[str]:
        return list(BRIDGES) + list(CITIES)

    def check(self) -> None:
        if not 1 <= self.n_facts <= min(len(BRIDGES), len(CITIES)):
            raise ValueError(f"n_facts must be 1 to {min(len(BRIDGES), len(CITIES))}, got "
                             f"{self.n_facts}.")
        if self.n_stories < 1:
            raise ValueError(f"n_stories must be 1 or more, got {self.n_stories}.")

    def render(self, first_hop: list[tuple[str, str, str]], second_hop: list[tuple[str, str]],
               query: int, group) -> TextExample:
        """Write the facts in order and the query about ``first_hop[query]``.

        ``first_hop`` contains (subject, relation, bridge) and ``second_hop`` (bridge, city);
        the labels follow from looking the queried subject up in them.
        """
        builder = TextBuilder()
        for subject, relation, bridge in first_hop:
            builder.add(f"The {relation} of {subject} is {bridge}. ")
        for bridge, city in second_hop:
            builder.add(f"{bridge} was born in {city}. ")

        subject, relation, bridge = first_hop[query]
        city = dict(second_hop)[bridge]
        surname = subject.split(" ")[-1]
        builder.mark(builder.add_word(f"The {relation} of {subject}", surname),
                     BRIDGES.index(bridge), 1)
        builder.mark(builder.add_word(" was born in", "in"),
                     len(BRIDGES) + CITIES.index(city), 2)
        meta = {"first_hop": [list(fact) for fact in first_hop],
                "second_hop": [list(fact) for fact in second_hop], "query": query}
        return TextExample(builder.text, builder.readouts, group, meta)

    def text_examples(self) -> list[TextExample]:
        self.check()
        rng = random.Random(self.seed)
        examples = []
        for index in range(self.n_stories):
            subjects: list[str] = []
            while len(subjects) < self.n_facts:
                name = f"{rng.choice(FIRST_NAMES)} {rng.choice(SURNAMES)}"
                if name not in BRIDGES and name not in subjects:
                    subjects.append(name)
            bridges = rng.sample(BRIDGES, self.n_facts)
            cities = rng.sample(CITIES, self.n_facts)
            first_hop = [(subject, rng.choice(RELATIONS), bridge)
                         for subject, bridge in zip(subjects, bridges)]
            second_hop = rng.sample(list(zip(bridges, cities)), self.n_facts)
            query = rng.randrange(self.n_facts)
            example = self.render(first_hop, second_hop, query, index)

            # The queried first-hop fact names another chain's bridge instead, so the
            # bridge and the answer both change; one chain leaves no other bridge to name.
            if self.n_facts > 1:
                subject, relation, bridge = first_hop[query]
                other = rng.choice([b for b in bridges if b != bridge])
                changed = list(first_hop)
                changed[query] = (subject, relation, other)
                example.counterfactual = self.render(changed, second_hop, query, index)
                example.counterfactual.meta["changed_fact"] = query
            examples.append(example)
        return examples

    def behaviour_queries(self, example: TextExample) -> list[BehaviourQuery]:
        cities = [city for _, city in example.meta["second_hop"]]
        answer = example.readouts[-1]
        choices = [f" {city}" for city in cities]
        return [BehaviourQuery(example.text[: answer.span.end], choices,
                               cities.index(self.class_names[answer.label]), answer.step,
                               example.group)]

    def shortcuts(self, example: TextExample) -> dict[str, list[int | None]]:
        first_hop, second_hop = example.meta["first_hop"], example.meta["second_hop"]
        return {
            "last bridge named": [BRIDGES.index(first_hop[-1][2]), None],
            "last city named": [None, len(BRIDGES) + CITIES.index(second_hop[-1][1])],
            "first city named": [None, len(BRIDGES) + CITIES.index(second_hop[0][1])],
        }
