"""Reference models used by the recipes."""

from lightning_accel.models.gpt import GPT, GPTConfig, TransformerBlock
from lightning_accel.models.image_classifier import ImageClassifier
from lightning_accel.models.language_model import GPTLanguageModel
from lightning_accel.models.resnet import BasicBlock, ResNet

__all__ = [
    "GPT",
    "BasicBlock",
    "GPTConfig",
    "GPTLanguageModel",
    "ImageClassifier",
    "ResNet",
    "TransformerBlock",
]
