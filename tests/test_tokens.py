"""The byte-token cache and DataModule: built once, complete, rebuilt when damaged, seeded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_accel.data.corpus import corpus_files
from lightning_accel.data.tokens import TokenDataModule, TokenWindows, build_token_cache
from lightning_accel.errors import ConfigError


def test_cache_holds_every_byte_once_and_splits_by_file(small_corpus: Path, tmp_path: Path) -> None:
    files = corpus_files(str(small_corpus), (".py",))
    cache = build_token_cache(files, 0.2, tmp_path)
    train = (cache / "train.bin").read_bytes()
    val = (cache / "val.bin").read_bytes()
    assert len(train) + len(val) == sum(p.stat().st_size for p in files)
    assert 0 < len(val) < len(train)
    contents = [p.read_bytes() for p in files]
    assert all((c in train) != (c in val) for c in contents), "each file lies in one split"


def test_cache_is_built_once(small_corpus: Path, tmp_path: Path) -> None:
    files = corpus_files(str(small_corpus), (".py",))
    first = build_token_cache(files, 0.1, tmp_path)
    stamp = (first / "train.bin").stat().st_mtime_ns
    assert build_token_cache(files, 0.1, tmp_path) == first
    assert (first / "train.bin").stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name], "no staging folder is left"


def test_truncated_cache_is_rebuilt(small_corpus: Path, tmp_path: Path) -> None:
    files = corpus_files(str(small_corpus), (".py",))
    cache = build_token_cache(files, 0.1, tmp_path)
    size = (cache / "train.bin").stat().st_size
    with (cache / "train.bin").open("r+b") as handle:
        handle.truncate(size // 2)
    assert build_token_cache(files, 0.1, tmp_path) == cache
    assert (cache / "train.bin").stat().st_size == size


def test_changed_corpus_gets_a_new_cache(small_corpus: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("hello world\n" * 200)
    first = build_token_cache(corpus_files(str(corpus), (".txt",)), 0.1, tmp_path / "cache")
    (corpus / "a.txt").write_text("changed text\n" * 300)
    second = build_token_cache(corpus_files(str(corpus), (".txt",)), 0.1, tmp_path / "cache")
    assert first != second
    assert (second / "train.bin").read_bytes().startswith(b"changed text")


def test_windows_pair_inputs_with_next_byte_targets() -> None:
    tokens = torch.arange(100, dtype=torch.uint8).numpy()
    windows = TokenWindows(tokens, seq_len=10)
    assert len(windows) == 9
    inputs, targets = windows[3]
    assert inputs.tolist() == list(range(30, 40))
    assert targets.tolist() == list(range(31, 41))


def _first_batch(source: Path, seed: int) -> torch.Tensor:
    data = TokenDataModule(source=str(source), seq_len=16, batch_size=4, seed=seed)
    data.prepare_data()
    data.setup("fit")
    return next(iter(data.train_dataloader()))[0]


def test_training_order_is_set_by_the_seed(small_corpus: Path) -> None:
    assert torch.equal(_first_batch(small_corpus, 0), _first_batch(small_corpus, 0))
    assert not torch.equal(_first_batch(small_corpus, 0), _first_batch(small_corpus, 1))


def test_stdlib_corpus_is_sorted_python_source() -> None:
    files = corpus_files("stdlib", (".py",))
    assert len(files) > 500
    assert files == sorted(files)
    assert not any("site-packages" in p.parts for p in files)


def test_directory_without_matching_files_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "notes.md").write_text("text")
    with pytest.raises(ConfigError, match="holds no file ending in .py"):
        TokenDataModule(source=str(tmp_path))
