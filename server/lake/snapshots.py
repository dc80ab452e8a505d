"""Which snapshots of `headlessly.events` hold nothing their successor lacks, and expiring them.

Every commit adds a snapshot, and every later commit copies the whole snapshot list (pyiceberg deep-copies
the table's metadata once per update it applies), so a commit's cost grows with the snapshots kept: 1-2 ms
more per kept snapshot on this project's 2-core machines (bench/lake_growth.py), where the background flush
commits every few seconds. A snapshot followed by an append (a flush, or the second half of a compaction's overwrite)
holds a subset of its successor's data files: expiring it orphans no data file, only its manifest list
(and, once manifests are merged, the manifests its successor merged away), which `lake maintain` sweeps.
Its rows are still in the table, so nothing is lost; only the state the table had for those few seconds
goes. A snapshot followed by anything else (the delete half of a compaction) references files its
successor replaced: `lake maintain` keeps one such per run for the retention period, the state before the
run, under a tag (no expiry removes a tagged snapshot), so that readers and recovery find them, and expires
the others its run made (maintain.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

# How long after it was superseded a snapshot stays: a scan plans on the snapshot current when it starts and
# reads its manifest list and manifests then; a minute is ample for that on a local table.
SUPERSEDED_GRACE = timedelta(minutes=1)
# The flusher expires superseded snapshots once this many have gathered: an expiry is a commit of its own.
EXPIRE_AT = 20
# `lake maintain` tags the table's state before each run that compacts "<prefix><the run's time, UTC>".
TAG_PREFIX = "headlessly-maintain-"
_TAG_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


def superseded_by_appends(table: Any, now: datetime, grace: timedelta = SUPERSEDED_GRACE) -> list[int]:
    """The ids of the snapshots whose one child is an append committed before `now - grace`, other than
    branch and tag heads."""
    from pyiceberg.table.snapshots import Operation

    metadata = table.metadata
    heads = _heads(table)
    children: dict[int, list[Any]] = {}
    for snapshot in metadata.snapshots:
        if snapshot.parent_snapshot_id is not None:
            children.setdefault(snapshot.parent_snapshot_id, []).append(snapshot)
    cutoff_ms = int((now - grace).timestamp() * 1000)
    out = []
    for snapshot in metadata.snapshots:
        below = children.get(snapshot.snapshot_id, [])
        if snapshot.snapshot_id in heads or len(below) != 1:
            continue
        child = below[0]
        if child.summary is not None and child.summary.operation == Operation.APPEND and child.timestamp_ms < cutoff_ms:
            out.append(snapshot.snapshot_id)
    return out


def older_than(table: Any, when: datetime) -> list[int]:
    """The ids of the snapshots committed before `when`, other than branch and tag heads."""
    cutoff_ms = int(when.timestamp() * 1000)
    heads = _heads(table)
    return [
        s.snapshot_id for s in table.metadata.snapshots if s.timestamp_ms < cutoff_ms and s.snapshot_id not in heads
    ]


def present(table: Any, ids: list[int]) -> list[int]:
    """Those of `ids` the table still has, other than branch and tag heads."""
    have = {s.snapshot_id for s in table.metadata.snapshots} - _heads(table)
    return [i for i in ids if i in have]


def made_on(table: Any, base: int | None) -> list[int]:
    """The ids of the snapshots from the current one back to `base` (not included): those a commit just made
    on `base` added. Empty when `base` is not an ancestor of the current snapshot."""
    if base is None:
        return []
    by_id = {s.snapshot_id: s for s in table.metadata.snapshots}
    out: list[int] = []
    sid = table.metadata.current_snapshot_id
    while sid is not None and sid != base:
        out.append(sid)
        snapshot = by_id.get(sid)
        sid = snapshot.parent_snapshot_id if snapshot else None
    return out if sid == base else []


def free_tag(refs: Any, now: datetime) -> str:
    """The tag name of the state before a maintenance run at `now`, not among `refs` (runs that started at the
    same microsecond: a microsecond later each)."""
    at = now.astimezone(UTC)
    while (name := TAG_PREFIX + at.strftime(_TAG_TIME)) in refs:
        at += timedelta(microseconds=1)
    return name


def stage_tag(tx: Any, snapshot_id: int, name: str) -> None:
    """Stage, in the transaction `tx`, a tag `name` on the snapshot. Stage it after the transaction's
    overwrite or append: pyiceberg keeps one requirement of each kind per transaction, the first staged, and
    the commit's "main is still where this view saw it" must be the one kept, not the tag's ("the tag is
    where this view saw it": absent). So the tag's own requirement is not checked: `name` must be free in the
    view `tx` was made on (free_tag), and any commit that has added it since moved main."""
    from pyiceberg.table.update.snapshot import ManageSnapshots

    ManageSnapshots(transaction=tx).create_tag(snapshot_id, name).commit()


def tags_before(table: Any, when: datetime) -> list[str]:
    """The names of the maintenance runs' tags whose run was before `when` (other tags are not ours)."""
    out = []
    for name in table.metadata.refs:
        if not name.startswith(TAG_PREFIX):
            continue
        try:
            made = datetime.strptime(name.removeprefix(TAG_PREFIX), _TAG_TIME).replace(tzinfo=UTC)
        except ValueError:
            continue
        if made < when:
            out.append(name)
    return out


def remove_tags(table: Any, names: list[str]) -> None:
    """Remove these tags in one commit (none: no commit)."""
    if names:
        with table.manage_snapshots() as ms:
            for name in names:
                ms.remove_tag(name)


def _heads(table: Any) -> set[int]:
    return {ref.snapshot_id for ref in table.metadata.refs.values()}


def expire(table: Any, ids: list[int]) -> None:
    """Expire these snapshots in one commit (none: no commit). Raises CommitFailedException, as for any commit
    that lost a race, when another process expired one of them first (pyiceberg applies the removal to the
    table as the catalog has it, and refuses an unknown id)."""
    from pyiceberg.exceptions import CommitFailedException

    if not ids:
        return
    try:
        table.maintenance.expire_snapshots().by_ids(ids).commit()
    except ValueError as exc:
        if not str(exc).startswith("Snapshot with snapshot id "):
            raise
        raise CommitFailedException(f"a snapshot to expire was expired meanwhile: {str(exc)[:200]}") from exc
