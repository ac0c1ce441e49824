"""Files: atomic writes, JSON reading with readable errors, and output directories.

Every file lyre writes goes through `atomic_write_bytes`: readers see the old file or the new one,
never half of one. Files get the permissions an ordinary `open()` would give (0666 minus the
umask): a temporary file is created 0600, and an exported model that only its owner can read is
of no use to a container or a colleague.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lyre.core.errors import LyreError, first_line


def current_umask() -> int:
    """The process umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    """Flush a directory entry to disk so a rename inside it survives a power cut (POSIX only)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` all at once: readers see the old file or the new, never half.

    The temporary file lives in the same directory because os.replace is only atomic within
    one filesystem.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp made it 0600
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """atomic_write_bytes for text (config.json, meta.json, ...)."""
    atomic_write_bytes(path, text.encode(encoding))


def write_json(path: str | Path, obj: Any) -> None:
    """`obj` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def make_temp_dir(parent: Path, prefix: str, suffix: str = ".tmp") -> Path:
    """A fresh directory beside its final place (same filesystem, so it can be renamed into
    place), with the permissions of an ordinary mkdir (mkdtemp's are 0700)."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))
    path.chmod(0o777 & ~current_umask())
    return path


def cache_dir() -> Path:
    """lyre's cache (unpacked embedding models, tokenizers of in-memory models): $LYRE_CACHE,
    else $XDG_CACHE_HOME/lyre, else ~/.cache/lyre."""
    if os.environ.get("LYRE_CACHE"):
        return Path(os.environ["LYRE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lyre"


def read_text(path: str | Path, what: str = "file") -> str:
    """A UTF-8 text file's contents; a missing, unreadable or non-UTF-8 file is a one-line
    LyreError that says what it was for (`what`, e.g. "task file")."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LyreError(f"{what} {path} not found") from None
    except UnicodeDecodeError as e:
        raise LyreError(f"{what} {path} is not UTF-8 text (byte {e.start})") from None
    except OSError as e:  # a directory, no permission, ...
        raise LyreError(f"cannot read {what} {path}: {e.strerror or e}") from None


def read_json(path: str | Path, what: str = "") -> Any:
    """Parse a JSON file; a missing or malformed file is a LyreError naming it and the line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LyreError(f"{path} not found{': ' + what if what else ''}") from None
    except UnicodeDecodeError:
        raise LyreError(f"{path} is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise LyreError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def read_json_object(path: str | Path, what: str = "") -> dict[str, Any]:
    """read_json for files that must hold one JSON object (configs, metadata)."""
    raw = read_json(path, what)
    if not isinstance(raw, dict):
        raise LyreError(f"{path} must hold a JSON object")
    return raw


def read_safetensors(path: str | Path, missing: str, *, device: str = "cpu",
                     hint: str = "") -> dict[str, Any]:
    """Every tensor of a safetensors file, on `device`; `missing` is the error when there is no
    such file, `hint` what to do about a damaged one (appended to its error)."""
    return read_safetensors_and_metadata(path, missing, device=device, hint=hint)[0]


def read_safetensors_and_metadata(path: str | Path, missing: str, *, device: str = "cpu",
                                  hint: str = "") -> tuple[dict[str, Any], dict[str, str]]:
    """The one reader of safetensors files: (tensors, the header's string metadata). A damaged
    file is one readable line, not a Rust panic's traceback."""
    from safetensors import SafetensorError, safe_open  # needs torch: imported only when used

    path = Path(path)
    if not path.is_file():
        raise LyreError(missing)
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            return {key: f.get_tensor(key) for key in f.keys()}, dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise LyreError(f"{path} is not a readable safetensors file ({first_line(e)}){hint}") from None


def prepare_output_dir(out: Path, *, holds_output: bool, owned: Iterable[str], force: bool,
                       refusal: str) -> None:
    """Make `out` ready for a command that writes the entries `owned` into it.

    If it already holds that kind of output (`holds_output`), refuse with `refusal` unless
    `force`, which removes the owned entries only: whatever else the user keeps there stays.
    """
    if out.exists() and not out.is_dir():
        raise LyreError(f"{out} exists and is not a directory; choose another output directory")
    if holds_output and not force:
        raise LyreError(refusal)
    if holds_output:
        for name in owned:
            remove_path(out / name)
    out.mkdir(parents=True, exist_ok=True)


def remove_path(path: Path) -> None:
    """Delete a file or a directory tree; nothing if it is absent."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
