"""``DIR/_summary.json`` and the closing line: counts over every finished part, throughput of this run."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from seqrec.batchinfer.outputs import commit_file, temp_path

SUMMARY_FILE = "_summary.json"


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, MB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1 << 20) if sys.platform == "darwin" else peak / (1 << 10), 1)


def build_summary(entries: list[dict], run: dict, users_this_run: int, wall_seconds: float) -> dict:
    """Totals over the ledger ``entries`` (this run's parts and earlier runs'), plus ``run`` facts.

    ``input_rows`` counts the parts' rows: users in the list form, interactions in the long form.
    ``input_users`` counts the users met in the input, before duplicate handling: one per list-form row, one
    per run of a user's rows in a grouped log (a part's rows sorted by user first where its users interleave),
    each row with a null user id one. A user met twice in a part counts twice, the second time among the
    rejects (``duplicate_user``), so ``input_users`` = ``users_scored`` + ``users_rejected`` always, and
    distinct users are ``input_users`` less the ``duplicate_user`` rejects."""
    rejected: dict[str, int] = {}
    for entry in entries:
        for reason, count in entry["rejected"].items():
            rejected[reason] = rejected.get(reason, 0) + count
    scored = sum(entry["users_scored"] for entry in entries)
    return {
        **run,
        "parts": len(entries),
        "input_rows": sum(entry["rows"] for entry in entries),
        "input_users": scored + sum(rejected.values()),
        "users_scored": scored,
        "users_rejected": sum(rejected.values()),
        "rejected_by_reason": dict(sorted(rejected.items())),
        "unknown_items_dropped": sum(entry["unknown_items_dropped"] for entry in entries),
        "users_without_items": sum(entry.get("users_without_items", 0) for entry in entries),  # older ledgers lack it
        "wall_seconds": round(wall_seconds, 3),
        "users_this_run": users_this_run,
        "users_per_second": round(users_this_run / wall_seconds, 1) if wall_seconds > 0 else 0.0,
        "peak_rss_mb": peak_rss_mb(),
    }


def write_summary(directory: Path, summary: dict) -> Path:
    final = directory / SUMMARY_FILE
    temp_path(final).write_text(json.dumps(summary, indent=2) + "\n")
    commit_file(temp_path(final), final)
    return final


def summary_line(summary: dict) -> str:
    reasons = ", ".join(f"{reason} {count}" for reason, count in summary["rejected_by_reason"].items())
    empty = summary["users_without_items"]
    return (f"scored {summary['users_scored']:,} users"
            f"{f' ({empty:,} with no item left to recommend)' if empty else ''}, rejected {summary['users_rejected']:,}"
            f"{f' ({reasons})' if reasons else ''}, dropped {summary['unknown_items_dropped']:,} unknown items; "
            f"{summary['parts']} part{'s' if summary['parts'] != 1 else ''}{_users_of_a_log(summary)}; this run {summary['users_this_run']:,} users in {summary['wall_seconds']:.1f} s "
            f"({summary['users_per_second']:,.0f} users/s), peak RSS {summary['peak_rss_mb']:,.0f} MB "
            f"-> {summary['output']}")


def _users_of_a_log(summary: dict) -> str:
    """`` (1,200 users from 25,000 interactions)`` for an interaction log, whose rows are no users; nothing for
    the list form (or a summary written before ``input_users``)."""
    if summary.get("form") != "long" or "input_users" not in summary:
        return ""
    return f" ({summary['input_users']:,} users from {summary['input_rows']:,} interactions)"
