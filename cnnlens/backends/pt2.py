"""Reading ``torch.export`` archives (``.pt2``) without running code from them.

``torch.export.load`` itself warns that it "uses pickle under the hood": a plain export holds
raw tensor files and JSON, but the format also allows pickled weights or constants
(``use_pickle``), pickled sample inputs (loaded with ``weights_only=False`` when the safe load
fails), pickled opaque constants and ``guards_code`` (Python source that ``ep.module()``
executes). :func:`check_archive` accepts an archive only when it holds none of these: every
member is one a plain ``torch.export.save`` writes, every weight and constant is a raw tensor
file, the sample inputs load with ``torch.load(weights_only=True)`` and ``guards_code`` is empty.
Anything else needs ``trust_pickle=True``. The bytes checked are the bytes loaded (the file is
read once), and cnnlens never calls ``ep.module()``; it runs ``torch.export.unflatten``'s modules.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any, List, Union

from ..core.errors import ModelError

#: Members a plain ``torch.export.save`` writes, after the archive's top folder.
_PLAIN = [re.compile(p) for p in (
    r"archive_format", r"archive_version", r"byteorder", r"\.data/version", r"\.data/serialization_id",
    r"models/[\w.-]+\.json", r"data/weights/[\w.-]+_config\.json", r"data/weights/weight_\d+",
    r"data/constants/[\w.-]+_config\.json", r"data/constants/(tensor|constant)_\d+",
    r"data/sample_inputs/[\w.-]+\.pt",
)]


def is_pt2(source: Union[str, bytes]) -> bool:
    """Whether ``source`` (a path or the bytes) is a ``torch.export.save`` archive (a zip with
    ``archive_format`` = pt2)."""
    try:
        with zipfile.ZipFile(io.BytesIO(source) if isinstance(source, bytes) else source) as archive:
            for name in archive.namelist():
                if name.split("/", 1)[-1] == "archive_format":
                    return archive.read(name).strip() == b"pt2"
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return False


def _unsafe_members(archive: zipfile.ZipFile) -> List[str]:
    """What in ``archive`` would run code on loading; empty for a plain export."""
    import torch

    found = []
    for name in archive.namelist():
        inner = name.split("/", 1)[-1]
        if name.endswith("/") or any(p.fullmatch(inner) for p in _PLAIN):
            continue
        found.append(f"{inner} (not written by a plain torch.export.save)")
    for name in archive.namelist():
        inner = name.split("/", 1)[-1]
        if inner.endswith("_config.json"):
            config = json.loads(archive.read(name)).get("config", {})
            pickled = sorted(k for k, v in config.items() if isinstance(v, dict) and v.get("use_pickle"))
            found += [f"{k} (a pickled tensor in {inner})" for k in pickled]
        elif inner.startswith("models/"):
            if json.loads(archive.read(name)).get("guards_code"):
                found.append(f"{inner} (guards_code: Python source run by ep.module())")
        elif inner.startswith("data/sample_inputs/"):
            try:
                torch.load(io.BytesIO(archive.read(name)), weights_only=True)
            except Exception:  # noqa: BLE001 - anything but plain tensors: torch.export.load would unpickle it
                found.append(f"{inner} (sample inputs that only a full unpickle reads)")
    return found


def check_archive(data: bytes, where: str) -> None:
    """Raise ModelError when loading ``data`` would unpickle or execute anything."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unsafe = _unsafe_members(archive)
    except (zipfile.BadZipFile, OSError, ValueError, KeyError) as error:
        raise ModelError(f"{where} is not a readable torch.export archive ({type(error).__name__}: {error})") from None
    if unsafe:
        raise ModelError(
            f"{where} holds what a plain torch.export.save does not write, and loading it would run code from "
            f"the file: {'; '.join(unsafe[:3])}{' ...' if len(unsafe) > 3 else ''}. Load it only if you trust it: "
            f"cnnlens.load(path, trust_pickle=True) (command line: --trust-pickle)")


def read_program(path: str, trust_pickle: bool = False) -> Any:
    """The ``ExportedProgram`` in the ``.pt2`` file ``path``, checked by :func:`check_archive`
    unless ``trust_pickle``."""
    import torch

    with open(path, "rb") as handle:
        data = handle.read()
    if not trust_pickle:
        check_archive(data, path)
    try:
        return torch.export.load(io.BytesIO(data))
    except Exception as error:  # noqa: BLE001 - torch raises many kinds for a bad archive
        raise ModelError(f"cannot load the torch.export program {path} ({type(error).__name__}: {error}); "
                         f"export it again with cnnlens.adapters.export.to_exported") from None
