"""Small models of each kind, trained from scratch on a task to compare their cascades."""

from .architectures import TOY_ARCHITECTURES, ToyConfig, build_toy_model
from .train import METADATA_FILE, ToyResult, train_toy
from .vocabulary import build_task_tokenizer, label_token_ids

__all__ = ["METADATA_FILE", "TOY_ARCHITECTURES", "ToyConfig", "ToyResult", "build_task_tokenizer",
           "build_toy_model", "label_token_ids", "train_toy"]
