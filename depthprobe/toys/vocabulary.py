"""A word-level tokenizer built from a task's texts, and the token that names each class."""

from __future__ import annotations

from typing import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

from ..tasks.base import Task, TextExample

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)


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
    the behaviour queries with their answers, and the class names. Every encoding starts
    with ``[BOS]``. Returns a transformers fast tokenizer with working offsets, which
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

    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token=UNK))
    tokenizer.pre_tokenizer = splitter
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocabulary[BOS])])
    tokenizer.decoder = decoders.WordPiece()  # joins words with spaces
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=PAD, unk_token=UNK,
                                   bos_token=BOS, eos_token=EOS)


def label_token_ids(task: Task, examples: Sequence[TextExample], tokenizer) -> list[int]:
    """Return the token that names each class, indexed by label.

    When the task's behaviour queries offer one answer per class, the same for every
    example, class ``k`` is named by the first token of answer ``k``: the token that the
    lens and behaviour methods read. Otherwise each class is named by the last token of
    its class name, which distinguishes names such as "cup A" and "cup B". Raises
    ``ValueError`` when two classes would share a token.
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
    else:
        choices = list(task.class_names)
        ids = [tokenizer(name, add_special_tokens=False)["input_ids"][-1] for name in choices]
    if len(set(ids)) != len(ids) or tokenizer.unk_token_id in ids:
        raise ValueError(
            f"The classes of task {task.name!r} are named by {choices}, whose naming tokens "
            f"{tokenizer.convert_ids_to_tokens(ids)} are not distinct known words; give the "
            f"task class names or behaviour answers that start with distinct words."
        )
    return ids
