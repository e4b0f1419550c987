"""The job ledger: which parts are finished, so a killed job resumes without losing or repeating a user.

``DIR/_ledger.jsonl``, appended and fsynced, one JSON object per line:

- first line ``{"job": {...}}``: what the output depends on (model, backend, top-K, exclude-seen,
  layout, input parts with their rows and fingerprint: size, footer and content sample digests, or size and
  footer in a ledger written before the sample, compared as such: ``same_part``); ``--resume`` refuses a
  ledger of a different job, naming what differs (for parts: which were added, removed or rewritten), except
  for parts rewritten before they were scored (a damaged part written again): the resume appends
  the job line with their new digests, and the last job line is the one later resumes must match;
- ``{"part": name, "input": path, "rows": .., "users_scored": .., "rejected": {reason: n},
  "unknown_items_dropped": .., "users_without_items": .., "seconds": ..}`` after a part's output and rejects were renamed
  into place: a part is finished exactly when its line is complete. ``seconds`` is the part's share of the
  job's wall time (they add up to it); under Ray, whose actors score parts side by side, the line also
  holds ``actor_seconds``, the seconds the actors spent reading and scoring the part;
- last, ``{"finished": true}`` once ``_rejects.parquet`` and ``_summary.json`` are written.

A kill between a part's rename and its ledger line only means the part is scored again and the
same file replaces itself. A torn last line (a kill during the append) is ignored for the same
reason. Batch size and engine may change between runs: they change neither the users nor their
items, though on the torch backend a score may differ in its last float bits (sums over other batch
shapes); with the same batch size a resumed job's files equal an uninterrupted run's.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from seqrec.batchinfer.inputs import same_part
from seqrec.batchinfer.outputs import REJECTS_DIR, TEMP_SUFFIX, fsync_directory
from seqrec.directories import unusable_path
from seqrec.errors import ConfigError, DataError, received_expected

LEDGER_FILE = "_ledger.jsonl"
STAGING_DIR = "_staging"  # engine scratch space (Ray's staged results); removed at the end


class Ledger:
    def __init__(self, directory: Path, job: dict, entries: list[dict], finished: bool) -> None:
        self.directory = directory
        self.path = directory / LEDGER_FILE
        self.job = job
        self.entries = entries
        self.finished = finished
        self.rewritten: list[str] = []  # parts not yet scored that a resume found rewritten
        self._lock_handle = None

    @property
    def done(self) -> dict[str, dict]:
        return {entry["part"]: entry for entry in self.entries}

    @classmethod
    def open(cls, directory: Path, job: dict, resume: bool) -> Ledger:
        """Start a job in ``directory`` (absent or empty), or with ``resume`` continue the one there.

        The ledger stays locked (``flock``) while this process runs: a second job on the same
        directory, resumed or new, is refused instead of deleting the first one's files in flight.
        """
        directory = Path(directory)
        path = directory / LEDGER_FILE
        try:
            if path.is_file():  # a job's directory: refused at once while that job runs
                lock = _lock(path)
                try:
                    if not resume:
                        _check_empty(directory, path)  # raises: a previous job's ledger
                    recorded, entries, finished, rewritten = _read(path, job)
                    ledger = cls(directory, recorded, entries, finished)
                    clean_temporaries(directory, keep_rejects=not ledger.finished)
                    if recorded != job and not finished:  # parts rewritten before being scored, or the input
                        # moved: the job now reads those contents at those paths; later resumes are held to it
                        ledger.job, ledger.rewritten = job, rewritten
                        ledger._append({"job": job})
                except BaseException:
                    lock.close()
                    raise
            else:
                _check_empty(directory, path)
                directory.mkdir(parents=True, exist_ok=True)
                lock = _lock(path, create=True)
                ledger = cls(directory, job, [], False)
                ledger._append({"job": job})
        except OSError as err:
            raise unusable_path("--output", directory, err) from err
        ledger._lock_handle = lock  # held until ``close`` (or the process's end, whatever ends it)
        return ledger

    def close(self) -> None:
        """Release the lock; the ledger file stays."""
        handle, self._lock_handle = self._lock_handle, None
        if handle is not None:
            handle.close()

    def record(self, entry: dict) -> None:
        self._append(entry)
        self.entries.append(entry)

    def finish(self) -> None:
        self._append({"finished": True})
        self.finished = True

    def _append(self, entry: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        fsync_directory(self.directory)


def _check_empty(directory: Path, path: Path) -> None:
    if directory.is_dir() and any(directory.iterdir()):
        held = "a previous job's ledger (add --resume to continue it)" if path.is_file() else "other files"
        raise ConfigError(received_expected(f"--output '{directory}'", f"a directory holding {held}",
                                            "an absent or empty directory, or --resume on a job's own output"))
    if directory.exists() and not directory.is_dir():
        raise ConfigError(received_expected(f"--output '{directory}'", "a file", "a directory (absent or empty)"))


def _lock(path: Path, create: bool = False):
    """An open handle on the ledger holding an exclusive lock; ConfigError if another job holds it.
    ``create`` makes the ledger, failing if a job started in the same moment made it first."""
    try:
        handle = open(path, "x" if create else "r")
    except FileExistsError:
        raise _in_use(path) from None
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise _in_use(path) from None
    return handle


def _in_use(path: Path) -> ConfigError:
    return ConfigError(received_expected(f"--output '{path.parent}'", "a directory another running seqrec score "
                                         "job holds (its ledger is locked)", "that job to end first, or another "
                                         "directory"))


def clean_temporaries(directory: Path, keep_rejects: bool = True) -> None:
    """Remove what an interrupted run left half written: temporary files (at any depth: parts of a partitioned
    input are written in subfolders) and the engine's staging."""
    for path in list(directory.rglob(f".*{TEMP_SUFFIX}")):
        path.unlink()
    shutil.rmtree(directory / STAGING_DIR, ignore_errors=True)
    if not keep_rejects:
        shutil.rmtree(directory / REJECTS_DIR, ignore_errors=True)


def _read(path: Path, job: dict) -> tuple[dict, list[dict], bool, list[str]]:
    text = path.read_text()
    if not text.endswith("\n"):  # a kill during the last append: drop the torn tail before appending again
        text = text[: text.rfind("\n") + 1]
        with open(path, "r+") as handle:
            handle.truncate(len(text.encode()))
            os.fsync(handle.fileno())
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            raise DataError(received_expected(f"{path} line {number}", repr(line[:80]), "a JSON object")) from None
    if not records or "job" not in records[0]:
        raise DataError(received_expected(str(path), "no job line first", "a ledger written by seqrec score"))
    recorded = [record["job"] for record in records if "job" in record][-1]  # a resume may restate it
    entries = [record for record in records[1:] if "part" in record]
    finished = any(record.get("finished") for record in records)
    done = {entry["part"] for entry in entries}
    rewritten = _rewritten_unscored(recorded.get("parts", []), job["parts"], done)
    if recorded != job and (finished and rewritten != [] or rewritten is None or _settings(recorded) != _settings(job)):
        raise ConfigError(received_expected("--resume", f"the ledger of a different job (differs in "
                                            f"{_differences(recorded, job, done)})",
                                            "the model, backend, top-k, exclude-seen, layout and input of the "
                                            "job that wrote it (a part not yet scored may be rewritten)"))
    return recorded, entries, finished, rewritten or []


def _settings(job: dict) -> dict:
    """Everything a job line holds but its input parts."""
    return {key: value for key, value in job.items() if key != "parts"}


def _rewritten_unscored(before: list, now: list, done: set[str]) -> list[str] | None:
    """The names of the parts rewritten since the ledger's job line where the input differs in nothing
    else and none of those parts is finished (their output does not exist yet: scoring their new
    contents is the job the user asks for); None where a part was added, removed, renamed or
    rewritten after it was scored."""
    if [entry[0] for entry in before] != [entry[0] for entry in now]:
        return None  # a part added, removed or renamed
    rewritten = [new[0] for old, new in zip(before, now) if not _same_content(old, new)]
    return None if done & set(rewritten) else rewritten


def _same_content(recorded: list, current: list) -> bool:
    """Two entries of a job line ([name, path, rows, fingerprint]) are the same part whatever their paths (an
    input moved to another folder, its parts unchanged, is the same input); fingerprints compared by
    ``same_part``, so a ledger written before the content sample still resumes."""
    return recorded[0] == current[0] and recorded[2] == current[2] and same_part(recorded[3], current[3])


def _differences(recorded: dict, job: dict, done: set[str]) -> str:
    """What a refused resume differs in, the input parts named; parts only rewritten before being scored
    are said to be allowed on their own, so the user looks for the other difference."""
    changed = sorted(key for key in set(job) | set(recorded) if job.get(key) != recorded.get(key))
    if "parts" in changed:
        before, now = recorded.get("parts", []), job["parts"]
        names = ", ".join(_changed_parts(before, now))
        rewritten = _rewritten_unscored(before, now, done)
        changed[changed.index("parts")] = (
            f"input parts {names} (added, removed or rewritten)" if rewritten is None
            else f"input parts {names} (rewritten before being scored: allowed on its own)" if rewritten
            else "the input's folder (its parts unchanged: allowed on its own)")
    return "; ".join(changed)


def recorded_parts(directory: Path) -> tuple[int, int] | None:
    """(parts finished, parts of the job) as the ledger in ``directory`` has them, for a message after an
    interrupt; None where there is no readable ledger."""
    path = Path(directory) / LEDGER_FILE
    try:
        lines = path.read_text().splitlines()
        job = json.loads(lines[0])["job"]
    except (OSError, IndexError, KeyError, TypeError, json.JSONDecodeError):
        return None
    finished = sum(line.startswith("{") and line.endswith("}") and '"part"' in line for line in lines[1:])
    return finished, len(job.get("parts", []))


def _changed_parts(recorded: list, current: list) -> list[str]:
    """Names of the input parts added, removed or rewritten (size, footer or sampled content) since the ledger
    was begun."""
    before, now = ({entry[0]: entry for entry in parts} for parts in (recorded, current))
    return sorted(name for name in set(before) | set(now)
                  if name not in before or name not in now or not _same_content(before[name], now[name]))[:5]
