"""Reading checkpoint files as data, never as code.

A pickle can name any importable function and have it called while it loads. Every file
the pack reads from a checkpoint goes through one of two readers here:

- :func:`load_data_file` – ``torch.load(weights_only=True)``: tensors, containers and plain
  values only. A file that would import anything else is refused with a :class:`ConfigError`
  naming the file and what it tried to import.
- :func:`read_dcp_metadata` – the ``.metadata`` index of a sharded checkpoint, which
  ``torch.distributed.checkpoint`` itself reads with plain ``pickle.load``. It is unpickled
  here with an allow-list of the index's own classes first; torch reads it only after that.
"""

from __future__ import annotations

import io
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

from typing_extensions import override

from lightning_accel.errors import ConfigError

DCP_METADATA = ".metadata"  # torch.distributed.checkpoint's index of the shards

# Modules whose classes a sharded checkpoint's index is built from (dataclasses and enums
# describing shards, offsets and dtypes; none of them runs anything when rebuilt).
_INDEX_MODULES = (
    "torch.distributed.checkpoint.metadata",
    "torch.distributed.checkpoint.filesystem",
    "torch.distributed.checkpoint.planner",
)
_PLAIN_GLOBALS = {
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # how torch pickles a torch.layout
}


# torch's restricted unpickler meeting an instruction it does not read (a pickle protocol
# torch.save does not write, or bytes that are no pickle): unreadable, not code
_UNREADABLE_OPCODE = re.compile(r"Unsupported operand \d+")
_CPP_CHECK = re.compile(r"^\[enforce fail at [^\]]*\][\s.]*")


class UnsafeCheckpointError(ConfigError):
    """A checkpoint file whose pickle names code, not data: refused, never skipped."""


def unsafe_checkpoint_error(key: str, path: Any, error: Exception) -> UnsafeCheckpointError:
    """The sentence for a checkpoint file whose pickle names something other than data
    (``error``: the refusal of torch's or the pack's restricted unpickler)."""
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    name = found.group(1) if found else "an object"
    if name.startswith("omegaconf."):  # hyper-parameters of a model Hydra built, kept as configs
        return UnsafeCheckpointError(
            key,
            str(path),
            f"holds OmegaConf objects ({name}), which the pack does not unpickle: its "
            "hyper-parameters were saved as Hydra configs; if you trust the file, re-save "
            "them as plain lists and dicts (docs/checkpoints.md shows how)",
        )
    return UnsafeCheckpointError(
        key,
        str(path),
        f"would run code when loaded (its pickle imports {name}, which is not checkpoint "
        "data); the pack loads only tensors and plain values: use a checkpoint written by "
        "Lightning or lightning-accel",
    )


def load_data_file(path: Path, key: str = "ckpt_path", mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file that would import code, or
    that is not a file ``torch.save`` wrote, is refused with a :class:`ConfigError` naming
    ``key`` and ``path``. ``mmap`` maps tensor storage instead of reading it (a cheap check of
    a large file saved as a zip archive)."""
    import torch

    if path.is_file() and path.stat().st_size == 0:
        raise ConfigError(key, str(path), "is an empty file, not a checkpoint")
    try:
        return torch.load(
            path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path)
        )
    except pickle.UnpicklingError as error:
        opcode = _UNREADABLE_OPCODE.search(str(error))
        if opcode is None:
            raise unsafe_checkpoint_error(key, path, error) from None
        reason = f"its pickle has an instruction torch's safe loader does not read: {opcode[0]}"
        raise _unreadable(key, path, reason) from None
    except Exception as error:  # noqa: BLE001 - the unpickler fails any way on foreign bytes
        # torch's C++ checks start "[enforce fail at file.cc:N] . "
        first_line = _CPP_CHECK.sub("", str(error).strip().split("\n")[0])
        sentence = re.split(r"\.\s", first_line)[0].rstrip(".")
        reason = f"{type(error).__name__}: {sentence}" if sentence else type(error).__name__
        raise _unreadable(key, path, reason) from None


def _unreadable(key: str, path: Path, reason: str) -> ConfigError:
    return ConfigError(
        key,
        str(path),
        f"is not a checkpoint file that torch.save wrote ({reason}); use a checkpoint "
        "written by Lightning or lightning-accel",
    )


def check_data_file(path: Path, key: str = "ckpt_path") -> None:
    """Fail unless ``path`` loads as data (tensors mapped, not read)."""
    load_data_file(path, key, mmap=True)


class _RefusedGlobal(pickle.UnpicklingError):
    """A global outside the index's allow-list."""


class _IndexUnpickler(pickle.Unpickler):
    """Unpickles a sharded checkpoint's index, importing only the classes it is made of."""

    @override
    def find_class(self, module: str, name: str) -> Any:
        import torch

        if (module, name) in _PLAIN_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(
            getattr(torch, name, None), (torch.dtype, torch.memory_format)
        ):
            return getattr(torch, name)
        if module in _INDEX_MODULES:
            found = super().find_class(module, name)
            # only the classes these modules define, not what they import
            if isinstance(found, type) and found.__module__ == module:
                return found
        raise _RefusedGlobal(f"GLOBAL {module}.{name}")


def read_dcp_metadata(directory: Path, key: str = "ckpt_path") -> Any:
    """The ``.metadata`` index of a sharded checkpoint directory, unpickled with only its own
    classes allowed; a crafted index is refused with a :class:`ConfigError`."""
    path = directory / DCP_METADATA
    try:
        return _IndexUnpickler(io.BytesIO(path.read_bytes())).load()
    except _RefusedGlobal as error:
        raise unsafe_checkpoint_error(key, path, error) from None
    except Exception as error:  # noqa: BLE001 - any other failure to parse: a corrupt index
        raise ConfigError(
            key, str(directory), f"has an unreadable {DCP_METADATA} ({error})"
        ) from None
