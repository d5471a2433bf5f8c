"""Tokenizers a token cache is built with: bytes (built in), or a ``tokenizers`` file."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

import numpy as np

from lightning_accel.errors import ConfigError

BYTES = "bytes"


class Tokenizer(Protocol):
    """Turns a file's text into token ids; ``identity`` names it in a cache's metadata."""

    identity: str
    vocab_size: int

    def encode(self, text: str) -> np.ndarray: ...


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """The smallest unsigned integer type that holds every id of the vocabulary."""
    if vocab_size <= 2**8:
        return np.uint8
    return np.uint16 if vocab_size <= 2**16 else np.uint32


class ByteTokenizer:
    """UTF-8 bytes as tokens: a vocabulary of 256, nothing to download or train."""

    identity = BYTES
    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


class FileTokenizer:
    """A trained Hugging Face ``tokenizers`` tokenizer read from its ``tokenizer.json``
    (needs the ``text`` extra). Its identity is the file's digest, so a cache built with
    another tokenizer file is never mistaken for this one's."""

    def __init__(self, path: Path) -> None:
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ImportError as error:
            raise ConfigError(
                "data.tokenizer",
                str(path),
                "needs the tokenizers package: pip install 'lightning-accel[text]'",
                [BYTES],
            ) from error
        try:
            self._tokenizer = HFTokenizer.from_file(str(path))
        except Exception as error:  # the library raises its own Exception type
            raise ConfigError(
                "data.tokenizer", str(path), "is not a tokenizers tokenizer.json file"
            ) from error
        self.identity = "tokenizers:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        self.vocab_size = self._tokenizer.get_vocab_size()

    def encode(self, text: str) -> np.ndarray:
        ids = self._tokenizer.encode(text, add_special_tokens=False).ids
        return np.asarray(ids, dtype=token_dtype(self.vocab_size))


def load_tokenizer(spec: str) -> Tokenizer:
    """``"bytes"``, or the path of a ``tokenizers`` ``tokenizer.json`` file."""
    if spec == BYTES:
        return ByteTokenizer()
    path = Path(spec).expanduser()
    if not path.is_file():
        raise ConfigError(
            "data.tokenizer", spec, "is neither built in nor a file", [BYTES, "a tokenizer.json"]
        )
    return FileTokenizer(path)
