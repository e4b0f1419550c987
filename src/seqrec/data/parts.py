"""The Parquet parts of a directory, found as Spark, Hive and ``pyarrow.dataset`` write them: one walk for
``seqrec data import`` and ``seqrec score``, so both read the same files of one directory.

Every ``*.parquet`` file at any depth is a part, named by its path under the directory
(``dt=2026-12-01/part-00000.parquet``); files and folders whose names start with ``_`` or ``.`` are skipped
at every level (``_temporary/``, ``_SUCCESS``, ``.spark-staging``, checksums). A symlinked folder is followed
and read under the link's name (a partition linked in from elsewhere), where ``Path.rglob`` on Python 3.11
skips its contents without a word. What would read rows twice or drop them is a DataError naming it: a
folder reached a second time (a link to a folder above, which would never end, or two links to one folder),
a file reached a second time (a link beside its target), a Parquet file there not named ``*.parquet``, a link
whose target is missing, a folder that cannot be listed.
"""

from __future__ import annotations

import os
from pathlib import Path

from seqrec.errors import DataError, received_expected

HIDDEN = ("_", ".")  # name prefixes of markers, checksums and staging folders: never parts
PARQUET_MAGIC = b"PAR1"  # the first (and last) four bytes of a Parquet file


def directory_parts(root: Path, what: str, expected: str) -> list[tuple[str, str]]:
    """(path, name under ``root``) of every part of ``root``, in path order. ``what`` names the input in errors
    (``input 'DIR'``), ``expected`` says what a stray Parquet file should have been."""
    files = visible_files(root, what)
    refuse_strays(root, unnamed_parts(files), what, expected)
    found = [(str(path), path.relative_to(root).as_posix()) for path in files if path.suffix == ".parquet"]
    refuse_files_reached_twice(found, what)
    return sorted(found)


def visible_files(root: Path, what: str) -> list[Path]:
    """The files of ``root`` and of every folder below it, in path order, but hidden ones and what lies below
    them; symlinked folders followed, each folder listed once, a folder reached twice refused (compared by
    device and inode)."""
    files, seen, pending = [], {}, [root]
    while pending:
        folder = pending.pop()
        status = folder.stat()
        identity = (status.st_dev, status.st_ino)
        if identity in seen:
            raise reached_twice(what, "folder", _under(root, seen[identity]), _under(root, folder),
                                "a symbolic link", "its parts would be read twice, or without end")
        seen[identity] = folder
        children = sorted(_children(root, folder, what))
        files += [child for child in children if child.is_file()]
        pending += reversed([child for child in children if child.is_dir()])  # popped in path order
    return files


def _children(root: Path, folder: Path, what: str) -> list[Path]:
    """The visible entries of ``folder``; DataError for a folder that cannot be listed or a link whose target is
    missing (a partition on an unmounted store): skipping either would drop its rows without a word."""
    try:
        children = [child for child in folder.iterdir() if not child.name.startswith(HIDDEN)]
    except OSError as err:
        raise DataError(received_expected(what, f"the folder '{_under(root, folder)}', which cannot be listed "
                                          f"({err.strerror or err})", "every folder readable")) from err
    dangling = [child for child in children if child.is_symlink() and not child.exists()]
    if dangling:
        named = ", ".join(f"'{_under(root, child)}' -> '{os.readlink(child)}'" for child in dangling[:3])
        raise DataError(received_expected(what, f"links whose targets are missing ({named})",
                                          "links to folders or parts that exist (remove the link, or mount its target)"))
    return children


def refuse_files_reached_twice(found: list[tuple[str, str]], what: str) -> None:
    """A file reached under two names (``b.parquet``, a link to ``a.parquet`` beside it) is a DataError naming
    both: its rows would be read twice. Compared by device and inode, as folders are."""
    seen: dict[tuple[int, int], str] = {}
    for path, name in sorted(found):
        status = os.stat(path)
        identity = (status.st_dev, status.st_ino)
        if identity in seen:
            raise reached_twice(what, "file", seen[identity], name, "a symbolic or hard link",
                                "its rows would be read twice")
        seen[identity] = name


def reached_twice(what: str, kind: str, first: str, again: str, how: str, harm: str) -> DataError:
    return DataError(received_expected(what, f"the {kind} '{first}' a second time, as '{again}' ({how})",
                                       f"each {kind} once: {harm} (remove the link)"))


def _under(root: Path, folder: Path) -> str:
    return folder.relative_to(root).as_posix()


def unnamed_parts(files: list[Path]) -> list[Path]:
    """Those of ``files`` (visible) that a reader of ``*.parquet`` parts would skip without a word: not named
    ``*.parquet`` but starting with Parquet's magic bytes (a Hive part such as ``000000_0``). Other files (notes,
    a README) are not parts and stay skipped."""
    return [path for path in files if path.suffix != ".parquet" and _is_parquet(path)]


def _is_parquet(path: Path) -> bool:
    try:
        with path.open("rb") as file:
            return file.read(4) == PARQUET_MAGIC
    except OSError:
        return False


def refuse_strays(directory: Path, strays: list[Path], what: str, expected: str) -> None:
    """DataError naming ``strays`` (``unnamed_parts`` of ``directory``'s files) by their paths under
    ``directory``; nothing when there are none."""
    if strays:
        named = ", ".join(f"'{path.relative_to(directory)}'" for path in strays[:3])
        more = f" and {len(strays) - 3} more" if len(strays) > 3 else ""
        raise DataError(received_expected(what, f"Parquet files not named *.parquet ({named}{more}), which would "
                                          "be skipped", expected))
