"""The byte-token cache and DataModule: built once, complete, rebuilt when damaged, seeded."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lightning_accel.data.corpus import corpus_files
from lightning_accel.data.tokens import (
    TokenDataModule,
    TokenWindows,
    build_token_cache,
    open_tokens,
)
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


def test_windows_pickle_as_their_memory_map_not_a_copy_of_the_tokens(
    small_corpus: Path, tmp_path: Path
) -> None:
    cache = build_token_cache(corpus_files(str(small_corpus), (".py",)), 0.1, tmp_path / "c")
    windows = TokenWindows(open_tokens(cache, "train"), seq_len=16, stride=8)
    data = pickle.dumps(windows)
    assert len(data) < 1000 < windows.tokens.nbytes
    copy = pickle.loads(data)
    assert isinstance(copy.tokens, np.memmap) and len(copy) == len(windows)
    for index in (0, 7, len(windows) - 1):
        assert all(torch.equal(a, b) for a, b in zip(copy[index], windows[index], strict=True))


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


@pytest.mark.parametrize("files", [["empty.py"], ["a.py", "b.py", "c.py"]])
def test_a_corpus_of_empty_files_is_a_config_error(tmp_path: Path, files: list[str]) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in files:
        (corpus / name).write_text("")
    data = TokenDataModule(source=str(corpus), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match=f"holds no text: its {len(files)} file") as error:
        data.prepare_data()
    assert error.value.key == "data.source" and data.cache is None


def _train_tokenizer(corpus: Path, target: Path, vocab_size: int = 400) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tokenizer.train([str(p) for p in sorted(corpus.rglob("*.py"))], trainer)
    tokenizer.save(str(target))
    return target


def test_tokenizer_file_builds_a_cache_of_its_own_ids(small_corpus: Path, tmp_path: Path) -> None:
    from tokenizers import Tokenizer

    path = _train_tokenizer(small_corpus, tmp_path / "tokenizer.json")
    data = TokenDataModule(source=str(small_corpus), tokenizer=str(path), seq_len=16)
    data.prepare_data()
    data.setup("fit")
    assert data.vocab_size == Tokenizer.from_file(str(path)).get_vocab_size() > 256
    assert data.train_set.tokens.dtype == np.uint16
    byte_level = TokenDataModule(source=str(small_corpus), seq_len=16)
    byte_level.prepare_data()
    assert byte_level.cache != data.cache, "each tokenizer has its own cache"
    decoded = Tokenizer.from_file(str(path)).decode(data.train_set.tokens[:2000].tolist())
    first_train_text = bytes(open_tokens(byte_level.cache, "train")[:500]).decode()
    assert decoded.startswith(first_train_text[:400]), "ids decode back to the corpus text"


def test_cache_of_another_tokenizer_is_rebuilt_with_a_warning(
    small_corpus: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    files = corpus_files(str(small_corpus), (".py",))
    cache = build_token_cache(files, 0.1, tmp_path)
    meta = json.loads((cache / "meta.json").read_text())
    (cache / "meta.json").write_text(json.dumps({**meta, "tokenizer": "tokenizers:0123"}))
    with caplog.at_level(logging.WARNING):
        assert build_token_cache(files, 0.1, tmp_path) == cache
    assert f"rebuilding the token cache {cache}" in caplog.text
    assert "built by tokenizer tokenizers:0123, not bytes" in caplog.text
    assert json.loads((cache / "meta.json").read_text()) == meta


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ({"dtype": "no such type"}, "gives a vocabulary of 256 as no such type, not 256 as uint8"),
        ({"dtype": "uint16"}, "gives a vocabulary of 256 as uint16, not 256 as uint8"),
        ({"vocab_size": 50_000}, "gives a vocabulary of 50000 as uint8, not 256 as uint8"),
        ({"train_tokens": "many"}, "train.bin holds"),
        (["not", "a", "mapping"], "meta.json is damaged"),
    ],
)
def test_a_cache_whose_meta_disagrees_with_the_tokenizer_is_rebuilt(
    damage: dict[str, object] | list[str],
    reason: str,
    small_corpus: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    files = corpus_files(str(small_corpus), (".py",))
    cache = build_token_cache(files, 0.1, tmp_path)
    meta = json.loads((cache / "meta.json").read_text())
    damaged = {**meta, **damage} if isinstance(damage, dict) else damage
    (cache / "meta.json").write_text(json.dumps(damaged))
    with caplog.at_level(logging.WARNING):
        assert build_token_cache(files, 0.1, tmp_path) == cache
    assert f"rebuilding the token cache {cache}" in caplog.text
    assert reason in caplog.text
    assert json.loads((cache / "meta.json").read_text()) == meta
    assert open_tokens(cache, "train").dtype == np.uint8


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / "good.txt").write_text("plain text\n" * 100)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me\n".encode("latin-1") * 100)
    data = TokenDataModule(source=str(tmp_path), suffixes=[".txt"], seq_len=8, batch_size=2)
    with pytest.raises(ConfigError, match=r"latin1\.txt' is not UTF-8 text \(byte 3\)"):
        data.prepare_data()
    skipping = TokenDataModule(
        source=str(tmp_path), suffixes=[".txt"], seq_len=8, batch_size=2, skip_undecodable=True
    )
    skipping.prepare_data()
    skipping.setup("fit")
    assert b"caf" not in bytes(skipping.train_set.tokens[:])


@pytest.mark.parametrize("sampling", ["sequential", "random"])
def test_sampling_modes_of_the_token_data(small_corpus: Path, sampling: str) -> None:
    data = TokenDataModule(source=str(small_corpus), seq_len=16, batch_size=4, sampling=sampling)
    data.prepare_data()
    data.setup("fit")
    inputs = next(iter(data.train_dataloader()))[0]
    tokens = torch.from_numpy(data.train_set.tokens[:].astype(np.int64))
    if sampling == "sequential":
        assert torch.equal(inputs, tokens[:64].view(4, 16))
    else:
        starts = [_find(tokens, row) for row in inputs]
        assert any(start % 16 for start in starts), "random windows start anywhere"
    assert len(data.train_dataloader()) == data.samples_per_epoch // 4


def _find(tokens: torch.Tensor, row: torch.Tensor) -> int:
    windows = tokens.unfold(0, len(row), 1)
    return int((windows == row).all(dim=1).nonzero()[0])


def test_a_model_smaller_than_the_vocabulary_is_refused(small_corpus: Path, tmp_path: Path) -> None:
    from lightning_accel.models import GPTLanguageModel

    path = _train_tokenizer(small_corpus, tmp_path / "tokenizer.json")
    data = TokenDataModule(source=str(small_corpus), tokenizer=str(path), seq_len=16)
    model = GPTLanguageModel(seq_len=16, n_layer=1, d_model=16, n_head=2)
    model.trainer = SimpleNamespace(datamodule=data)  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="model.vocab_size.*set it to"):
        model.setup("fit")


@pytest.mark.parametrize(
    ("variable", "given", "expected_setting"),
    [
        (None, "mine", "data.cache_dir"),
        ("env-cache", None, "LIGHTNING_ACCEL_CACHE"),
        ("env-cache", "mine", "data.cache_dir"),
        ("", None, "the default cache directory"),  # an empty variable is not the current dir
    ],
)
def test_the_cache_directory_and_the_setting_that_chose_it(
    variable: str | None,
    given: str | None,
    expected_setting: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lightning_accel.data.cache import cache_location

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if variable is None:
        monkeypatch.delenv("LIGHTNING_ACCEL_CACHE", raising=False)
    else:
        monkeypatch.setenv("LIGHTNING_ACCEL_CACHE", variable)
    directory, setting = cache_location(given)
    expected = {
        "data.cache_dir": Path("mine"),
        "LIGHTNING_ACCEL_CACHE": Path("env-cache"),
        "the default cache directory": tmp_path / "home" / ".cache" / "lightning-accel",
    }[expected_setting]
    assert (directory, setting) == (expected, expected_setting)


def test_a_cache_directory_that_cannot_be_made_is_named_before_tokenizing(
    small_corpus: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("LIGHTNING_ACCEL_CACHE", str(blocker / "cache"))
    data = TokenDataModule(source=str(small_corpus), seq_len=16, batch_size=2)
    with pytest.raises(ConfigError) as error:
        data.prepare_data()
    assert str(error.value) == (
        f"LIGHTNING_ACCEL_CACHE='{blocker / 'cache'}' cannot be created because {blocker} is "
        "not a directory; choose a writable directory."
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]
