"""A word-level tokenizer built from a task's texts, and the token that names each class."""

from __future__ import annotations

import logging
from typing import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from ..tasks.base import Task, TextExample

logger = logging.getLogger(__name__)

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)


def class_token(label: int) -> str:
    """Return the vocabulary entry that names class ``label`` when no answer word does.

    The ``Whitespace`` pre-tokenizer splits ``[class 0]`` into four words, so these entries
    never occur in encoded text and serve only as training targets.
    """
    return f"[class {label}]"


def _texts(task: Task, examples: Sequence[TextExample]) -> list[str]:
    texts = list(task.class_names)
    for example in examples:
        texts.append(example.text)
        if example.counterfactual is not None:
            texts.append(example.counterfactual.text)
        for query in task.behaviour_queries(example):
            texts.append(query.prompt)
            texts.extend(query.choices)
    return texts


def build_task_tokenizer(task: Task, examples: Sequence[TextExample]):
    """Build a word-level tokenizer whose vocabulary is every word of the task's texts.

    Words are runs of letters and digits, or of punctuation (the ``Whitespace``
    pre-tokenizer of the tokenizers library), so a readout span that ends on a word or a
    punctuation mark ends on a token. The texts are the examples, their counterfactuals,
    the behaviour queries with their answers, and the class names. The vocabulary also
    has one :func:`class_token` per class, and every encoding starts with ``[BOS]``. Returns a transformers fast tokenizer with working offsets, which
    ``save_pretrained`` writes and ``AutoTokenizer`` reloads.
    """
    from transformers import PreTrainedTokenizerFast

    splitter = pre_tokenizers.Whitespace()
    words = set()
    for text in _texts(task, examples):
        words.update(word for word, _ in splitter.pre_tokenize_str(text))
    vocabulary = {token: index for index, token in enumerate(SPECIAL_TOKENS)}
    for word in sorted(words - set(SPECIAL_TOKENS)):
        vocabulary[word] = len(vocabulary)
    for label in range(task.n_classes):
        vocabulary[class_token(label)] = len(vocabulary)

    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token=UNK))
    tokenizer.pre_tokenizer = splitter
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocabulary[BOS])])
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, unk_token=UNK,
                                   bos_token=BOS, eos_token=EOS)


def label_token_ids(task: Task, examples: Sequence[TextExample], tokenizer) -> list[int]:
    """Return the token that names each class, indexed by label.

    The task's behaviour queries may offer one answer per class, the same for every
    example, starting with distinct known words. Then class ``k`` is named by the first
    token of answer ``k``, which is the token that the lens and behaviour methods read.
    Otherwise class ``k`` is named by its own vocabulary entry :func:`class_token`.
    """
    choices = None
    for example in examples[:20]:
        for query in task.behaviour_queries(example):
            if choices is None:
                choices = list(query.choices)
            elif list(query.choices) != choices:
                choices = []

    if choices and len(choices) == task.n_classes:
        ids = [tokenizer(choice, add_special_tokens=False)["input_ids"][0] for choice in choices]
        if len(set(ids)) == len(ids) and tokenizer.unk_token_id not in ids:
            return ids
        logger.warning("The behaviour answers %s of task %r do not start with distinct words; "
                       "the toy names each class by a token of its own.", choices, task.name)
    return tokenizer.convert_tokens_to_ids([class_token(k) for k in range(task.n_classes)])
