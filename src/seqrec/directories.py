"""Output directories that are replaced whole: written beside their final path, then renamed into place.

Training writes checkpoints and ``seqrec export`` writes bundles this way, so a reader (or a killed
run) sees the old directory or the new one, never half of each, and a failed run leaves the old one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from seqrec.errors import ConfigError, received_expected
from seqrec.interrupts import interrupts_deferred


def checked_output(out: str | Path, what: str, marker: str, option: str = "--out",
                   protect: str | None = None, own: tuple[str, ...] | None = None) -> Path:
    """``out`` as an absolute path a run may replace: absent, an empty directory, or a ``what`` (a
    directory holding ``marker``) holding nothing but the entries named in ``own`` (when given: a bundle
    or notes a user put inside a checkpoint would go with it); never ``protect`` (an input), a directory
    holding it, or a path inside it (a later run that replaces ``protect`` whole, as training replaces a
    checkpoint, would delete it; and a directory of data read at any depth would read it). ConfigError
    otherwise, so that nothing else at that path is ever deleted. Checked before any work."""
    out = Path(out).resolve()
    if protect is not None:
        protected = Path(protect).resolve()
        if out == protected or out in protected.parents:
            raise ConfigError(received_expected(f"{option} '{out}'", f"'{protect}' or a directory holding it",
                                                f"a {what} directory apart from it"))
        if protected in out.parents:
            raise ConfigError(received_expected(f"{option} '{out}'", f"a path inside '{protect}'",
                                                f"a {what} directory apart from it"))
    if out.exists() and not out.is_dir():
        raise ConfigError(received_expected(f"{option} '{out}'", "a file", f"a {what} directory (absent, empty, "
                                            f"or a {what} to replace)"))
    if out.is_dir() and any(out.iterdir()) and not (out / marker).is_file():
        raise ConfigError(received_expected(f"{option} '{out}'", f"a directory that is not a {what} (no {marker}); "
                                            "it is not replaced", f"an absent or empty directory, or a {what} to "
                                            "replace"))
    if own is not None and out.is_dir():
        _check_only_own_entries(out, what, option, own)
    return out


def foreign_entries(directory: Path, own: tuple[str, ...]) -> list[str]:
    """The names in ``directory`` that are not in ``own``, sorted."""
    return sorted(entry.name for entry in directory.iterdir() if entry.name not in own)


def named_entries(names: list[str]) -> str:
    """``'a', 'b'`` (the first five, then how many more) for an error line."""
    return ", ".join(f"'{name}'" for name in names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _check_only_own_entries(out: Path, what: str, option: str, own: tuple[str, ...]) -> None:
    """ConfigError when the ``what`` at ``out`` holds entries it never writes: replacing it would delete them."""
    foreign = foreign_entries(out, own)
    if foreign:
        named = named_entries(foreign)
        raise ConfigError(received_expected(f"{option} '{out}'", f"a {what} that also holds {named}, which replacing "
                                            "it would delete", f"a {what} holding only its own files "
                                            f"({', '.join(own)}): move the others out, or choose another {option}"))


def staging_directory(out: Path, option: str = "--out") -> Path:
    """A fresh directory beside ``out`` (same file system, so the final rename is atomic), with the
    permissions the umask gives a new directory (not mkdtemp's 0700: services may read the result)."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise unusable_path(option, out, err) from err
    staging.chmod(0o777 & ~_umask())
    return staging


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _umask_permissions(directory: Path) -> None:
    """Files under ``directory`` get the mode the umask gives a new file: some writers (safetensors)
    create theirs owner-only, which a scoring job under another account could not read."""
    mode = 0o666 & ~_umask()
    for path in directory.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def unusable_path(option: str, path: Path, err: OSError) -> ConfigError:
    """The one-line error for an output path the file system refuses (under a file, no permission, ...)."""
    reason = (err.strerror or str(err)).lower()
    return ConfigError(received_expected(f"{option} '{path}'", f"a path where {reason} ({type(err).__name__})",
                                         "a directory this user can create and write"))


def replace_directory(staging: Path, out: Path) -> None:
    """Replace ``out`` with ``staging``: readers see the old directory or the new one, never half.
    Its files get the umask's permissions first."""
    _umask_permissions(staging)
    if out.exists():
        retired = out.with_name(f".{out.name}.old")
        shutil.rmtree(retired, ignore_errors=True)
        with interrupts_deferred():  # between the renames neither directory is at ``out``
            out.rename(retired)
            staging.rename(out)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        staging.rename(out)
