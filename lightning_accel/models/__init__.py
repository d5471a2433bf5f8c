"""Reference models used by the recipes."""

from lightning_accel.models.gpt import GPT, GPTConfig, TransformerBlock
from lightning_accel.models.language_model import GPTLanguageModel

__all__ = ["GPT", "GPTConfig", "GPTLanguageModel", "TransformerBlock"]
