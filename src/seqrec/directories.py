"""Output directories that are replaced whole: written beside their final path, then renamed into place.

Training writes checkpoints and ``seqrec export`` writes bundles this way, so a reader (or a killed
run) sees the old directory or the new one, never half of each, and a failed run leaves the old one.
A run killed outright (kill -9, the OOM killer) cannot remove its staging directory, which may be as
large as the model: the next run staging beside the same path removes it, once it has proved that run
dead by taking the lock the run held on the marker inside it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Iterator

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


STAGING_MARKER = ".seqrec-staging"  # in a staging directory while its run writes it, locked by that run


@contextmanager
def staging_directory(out: Path, option: str = "--out") -> Iterator[Path]:
    """A fresh directory beside ``out`` (same file system, so the final rename is atomic) for the block, with
    the permissions the umask gives a new directory (not mkdtemp's 0700: services may read the result); removed
    when the block ends unless ``replace_directory`` put it in place. Dead runs' staging directories beside
    ``out`` are removed first: nothing else ever would."""
    remove_dead_staging(out)
    staging, lock = _new_staging(out, option)
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already unless the block failed
        lock.close()  # only now: while this run lives, its staging directory is never unlocked


def _new_staging(out: Path, option: str) -> tuple[Path, IO[bytes]]:
    """The staging directory and the open marker whose lock proves this run alive."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as err:
        raise unusable_path(option, out, err) from err
    try:
        lock = _locked_marker(staging)
    except OSError as err:  # a file system without locks
        shutil.rmtree(staging, ignore_errors=True)
        raise unusable_path(option, out, err) from err
    staging.chmod(0o777 & ~_umask())
    return staging, lock


def _locked_marker(staging: Path) -> IO[bytes]:
    """The marker in ``staging``, open and exclusively locked (``flock``) for the run's lifetime. The kernel drops
    the lock when the process dies, however it dies, which a recorded PID cannot tell (PIDs are reused, and mean
    nothing across the containers sharing a volume; across hosts, flock holds where the file system shares
    its locks, as local disks and NFSv4 do, not on mounts with local-only locks); flock, unlike fcntl's record locks, is held per open
    file, so a second handle in the same process is refused too. Locked under another name, then renamed: no other
    run ever finds the marker unlocked while this one lives."""
    pending = staging / f"{STAGING_MARKER}.pending"
    handle = open(pending, "xb")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new file nobody else has opened
        os.rename(pending, staging / STAGING_MARKER)
    except OSError:
        handle.close()
        raise
    return handle


def remove_dead_staging(out: Path) -> None:
    """Remove the staging directories that dead runs left beside ``out``: only those named as ``staging_directory``
    names them for this very ``out`` and holding its marker, which no live run holds locked. One line on stderr
    for each (stdout holds a command's result), with the space it freed."""
    named = re.compile(rf"\.{re.escape(out.name)}\.[a-z0-9_]{{8}}")  # mkdtemp's prefix, then 8 of its characters
    try:
        found = sorted(path for path in out.parent.iterdir() if named.fullmatch(path.name))
    except OSError:  # no parent yet: nothing to remove (making it reports what is wrong with the path)
        return
    for staging in found:
        freed = _remove_if_dead(staging)
        if freed is None:
            continue
        if staging.exists():  # another user's files, an immutable one: its marker stays, so a later run tries again
            print(f"could not remove all of '{staging}' ({freed / 2**20:,.1f} MiB freed), the staging directory of "
                  "a run that died before it finished: remove it by hand", file=sys.stderr, flush=True)
        else:
            print(f"removed '{staging}' ({freed / 2**20:,.1f} MiB), the staging directory of a run that died before "
                  "it finished", file=sys.stderr, flush=True)


def _remove_if_dead(staging: Path) -> int | None:
    """The bytes freed by removing ``staging``, or None where it is kept: no marker (not ours, or a run between
    taking its marker out and renaming the directory into place), or a live run holding the marker's lock."""
    if staging.is_symlink() or not staging.is_dir():
        return None
    marker = staging / STAGING_MARKER
    try:
        fd = os.open(marker, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        if not os.path.samestat(os.fstat(fd), os.stat(marker, follow_symlinks=False)):
            return None  # its run took the marker out between our open and our lock (and another was put there)
        held = _size(staging)
        with interrupts_deferred():  # a Ctrl-C half way could take the marker and leave the rest for ever
            _remove_marker_last(staging)
        return held - (_size(staging) if staging.exists() else 0)
    except OSError:  # BlockingIOError: a live run holds it; FileNotFoundError: it ended meanwhile
        return None
    finally:
        os.close(fd)


def _remove_marker_last(staging: Path) -> None:
    """Remove ``staging``, its marker only once everything else is gone: a removal that fails part way (files
    this user may not delete) leaves the directory marked, for a later run to find and try again."""
    for entry in staging.iterdir():
        if entry.name == STAGING_MARKER:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
            continue
        try:
            entry.unlink(missing_ok=True)
        except OSError:
            pass  # left in place, and the marker with it
    if [entry.name for entry in staging.iterdir()] == [STAGING_MARKER]:
        shutil.rmtree(staging, ignore_errors=True)


def _size(directory: Path) -> int:
    """The bytes of the files under ``directory``, links not followed."""
    return sum(os.lstat(os.path.join(root, name)).st_size
               for root, _, names in os.walk(directory) for name in names)


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
    Its files get the umask's permissions first; the marker of the run stays behind (its lock holds until the
    staging block ends, and without the marker no other run removes the directory meanwhile)."""
    (staging / STAGING_MARKER).unlink(missing_ok=True)
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
