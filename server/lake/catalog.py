"""The Iceberg catalog and the `headlessly.events` table (schema, partitioning, properties)."""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, cast

from ..config import private_dir
from ..errors import StorageError

CATALOG = "headlessly"
NAMESPACE = "headlessly"
TABLE = "events"
WATERMARK_PREFIX = "headlessly.watermark."  # + tenant -> "<seq>:<hash>"

# pyiceberg splits what one commit writes to a partition into files of this size, packing its batches out of
# order (each file's seqs would overlap the others'): no split, so each commit's rows of a partition are one
# file, in seq order. Commits are bounded by rows instead (a flush's BATCH, maintenance's COMPACT_ROWS).
# A fast append (pyiceberg's default) adds a manifest per commit and keeps every earlier one, so reading the
# table (verify, restore, maintenance) opened one more manifest per flush; appends merge small manifests instead
# (into 8 MB ones, once 100 have gathered).
WRITE_PROPERTIES = {
    "write.target-file-size-bytes": str(1 << 40),
    "commit.manifest-merge.enabled": "true",
    # A commit that loses a race must not be re-applied blindly: a flush's would append its rows twice (the
    # flusher re-reads the watermark and retries itself), and pyiceberg's re-application drops the tag of a
    # maintenance run's first commit. Set again by the flusher and `lake maintain` when another tool unset it.
    "commit.retry.num-retries": "0",
}

TABLE_PROPERTIES = {
    **WRITE_PROPERTIES,
    "write.metadata.delete-after-commit.enabled": "true",
    "write.metadata.previous-versions-max": "20",
    "format-version": "2",
}


def catalog_properties(data_dir: Path) -> dict[str, str]:
    """The local default: a SQL catalog on SQLite with its warehouse beside it, under the data dir."""
    lake = (data_dir / "lakehouse").resolve()
    # The catalog's URI is decoded by SQLAlchemy (%XX, '?', '#'), so the path is quoted in it; the
    # warehouse is given as a plain path, which pyiceberg's file IO takes whole (a file:// URI would be
    # cut at '#' or '?').
    return {
        "type": "sql",
        "uri": "sqlite:///" + urllib.parse.quote(str(lake / "catalog.db"), safe="/"),
        "warehouse": str(lake / "warehouse"),
    }


def configured() -> dict[str, Any] | None:
    """The `headlessly` catalog's properties in pyiceberg's own configuration (.pyiceberg.yaml,
    PYICEBERG_CATALOG__HEADLESSLY__*), read now, not as of pyiceberg's import; None when it names none."""
    from pyiceberg.utils.config import Config

    return cast(dict[str, Any] | None, Config().get_catalog_config(CATALOG)) or None


def load(data_dir: Path) -> Any:
    """The `headlessly` catalog: pyiceberg's own configuration when it names one, else the local SQL catalog."""
    from pyiceberg.catalog import load_catalog

    if properties := configured():
        return load_catalog(CATALOG, **properties)
    lake = data_dir / "lakehouse"
    private_dir(lake / "warehouse")
    with _local_lock(lake):  # the SQL catalog creates its tables on first use: one process at a time
        return load_catalog(CATALOG, **catalog_properties(data_dir))


def open_table(data_dir: Path) -> Any:
    """The events table of this data dir's catalog, created on first use; with the local catalog,
    first use is serialized across processes by a file lock (its SQL has check-then-create races), and a
    table outside this data dir's warehouse (the data dir was copied or moved) is refused before it is read."""
    if configured():
        return events_table(load(data_dir))
    if not (data_dir / "lakehouse" / "catalog.db").exists() and (left := newest_metadata(data_dir)) is not None:
        _refuse_lost(data_dir, left)  # (before load, which would make an empty catalog)
    catalog = load(data_dir)
    with _local_lock(data_dir / "lakehouse"):
        stored = _stored_metadata_location(catalog)
        if stored is not None:
            _refuse_foreign(data_dir, stored, stored)
        elif (left := newest_metadata(data_dir)) is not None:
            _refuse_lost(data_dir, left)
        table = events_table(catalog)
        _refuse_foreign(data_dir, table.metadata_location, table.location())
        return table


def existing_table(data_dir: Path) -> Any | None:
    """The events table when the catalog has it, else None. Unlike open_table it makes nothing (no catalog
    database, none of a SQL catalog's own tables, no namespace, no table): for the commands that only read
    the table. A local catalog is refused as open_table refuses it (lost, or another data dir's)."""
    if properties := configured():
        catalog = _configured_to_read(properties)
        return None if catalog is None else _table_if_any(catalog)
    catalog = _local_to_read(data_dir)
    stored = None if catalog is None else _stored_metadata_location(catalog)
    if catalog is None or stored is None:
        if (left := newest_metadata(data_dir)) is not None:
            _refuse_lost(data_dir, left)
        return None
    _refuse_foreign(data_dir, stored, stored)
    table = catalog.load_table(f"{NAMESPACE}.{TABLE}")
    _refuse_foreign(data_dir, table.metadata_location, table.location())
    return table


_READ_ONLY = {"init_catalog_tables": "false"}  # a SQL catalog without its own tables is left without them


def _local_to_read(data_dir: Path) -> Any | None:
    """The local catalog opened to read; None when it has no database (opening it would make one)."""
    from pyiceberg.catalog import load_catalog

    if not (data_dir / "lakehouse" / "catalog.db").exists():
        return None
    return load_catalog(CATALOG, **catalog_properties(data_dir), **_READ_ONLY)


def _configured_to_read(properties: dict[str, Any]) -> Any | None:
    """The configured catalog opened to read; None for a SQLite one whose file is not there (opening it would
    make one)."""
    from pyiceberg.catalog import load_catalog

    if _is_sql(properties):
        if _missing_file(properties) is not None:
            return None
        properties = {**properties, **_READ_ONLY}
    return load_catalog(CATALOG, **properties)


def missing_catalog_file() -> str | None:
    """The file of the SQLite catalog pyiceberg's configuration names, when it is not there (a mistyped path?):
    existing_table then finds no table, and the read commands say which file they looked for."""
    properties = configured()
    return None if properties is None else _missing_file(properties)


def _missing_file(properties: dict[str, Any]) -> str | None:
    """The absolute path of a SQL catalog's SQLite file when it is not there; None for another catalog."""
    file = _sqlite_file(str(properties.get("uri", ""))) if _is_sql(properties) else None
    return None if file is None or Path(file).exists() else os.path.abspath(file)


def _is_sql(properties: dict[str, Any]) -> bool:
    """Whether pyiceberg makes these properties a SQL catalog (a type given, or one it infers from the URI)."""
    kind = properties.get("type")
    if kind or properties.get("py-catalog-impl"):
        return str(kind).lower() == "sql"
    return str(properties.get("uri", "")).startswith(("sqlite", "postgresql"))


def _sqlite_file(uri: str) -> str | None:
    """The file a SQLite URI names (a plain path, or a `file:` URI's); None for another database or memory."""
    from sqlalchemy.engine import make_url

    url = make_url(uri)
    name = url.database
    if url.get_backend_name() != "sqlite" or not name or name == ":memory:" or url.query.get("mode") == "memory":
        return None
    if url.query.get("uri") and name.startswith("file:"):
        return urllib.parse.unquote(urllib.parse.urlparse(name).path)
    return name


def _table_if_any(catalog: Any) -> Any | None:
    from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError

    if _without_its_own_tables(catalog):
        return None
    try:
        return catalog.load_table(f"{NAMESPACE}.{TABLE}")
    except (NoSuchTableError, NoSuchNamespaceError):
        return None


def _without_its_own_tables(catalog: Any) -> bool:
    """Whether this is a SQL catalog whose database lacks the SQL tables it lists its own tables in (one
    opened with _READ_ONLY, which does not make them)."""
    from pyiceberg.catalog.sql import IcebergTables, SqlCatalog
    from sqlalchemy import inspect

    return isinstance(catalog, SqlCatalog) and not inspect(catalog.engine).has_table(IcebergTables.__tablename__)


def _stored_metadata_location(catalog: Any) -> str | None:
    """Where the local catalog says the events table's current metadata file is, without reading it (the
    file may be gone with the data dir it was written in); None when the catalog has no such table."""
    from pyiceberg.catalog.sql import IcebergTables
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    if _without_its_own_tables(catalog):
        return None
    with Session(catalog.engine) as session:
        found: str | None = session.scalar(
            select(IcebergTables.metadata_location).where(
                IcebergTables.catalog_name == catalog.name,
                IcebergTables.table_namespace == NAMESPACE,
                IcebergTables.table_name == TABLE,
            )
        )
    return found


def _refuse_foreign(data_dir: Path, *locations: str) -> None:
    """Refuse a local catalog whose table lies outside this data dir's own warehouse. Its locations are
    absolute: a copied data dir's catalog still names the original's table (writing through it would add
    files to the original's warehouse and prune the original's metadata), a moved one's names files gone."""
    warehouse = data_dir / "lakehouse" / "warehouse"
    outside = [location for location in locations if not inside(location, warehouse)]
    if not outside:
        return
    where = local_path(outside[-1])  # the table's location when it is known, else its metadata file's
    if where.endswith(".metadata.json"):
        where = os.path.dirname(os.path.dirname(where))  # <table>/metadata/<file>
    raise StorageError(
        f"the lakehouse catalog of this data dir ({data_dir / 'lakehouse' / 'catalog.db'}) points at a table in "
        f"{where}, not in {warehouse}: the data dir was copied or moved; nothing was written",
        hint=(
            "Move the data dir back where it was; or give the copy a lakehouse of its own by moving its "
            "`lakehouse/` folder aside (its events are then flushed anew from seq 1). Run verify and restore "
            "of the original on the original data dir."
        ),
    )


def newest_metadata(data_dir: Path) -> Path | None:
    """The newest metadata file of an events table in this data dir's warehouse (by its version number), if any."""
    found = (data_dir / "lakehouse" / "warehouse").glob(f"*/{TABLE}/metadata/*.metadata.json")
    numbered = [(int(p.name.split("-", 1)[0]), p) for p in found if p.name.split("-", 1)[0].isdigit()]
    return max(numbered)[1] if numbered else None


def _refuse_lost(data_dir: Path, metadata: Path) -> None:
    """Refuse a local catalog without the events table while the warehouse holds one: the catalog was lost or
    emptied. Going on would start a new table beside the old one (every event flushed again) and the next
    `lake maintain` would remove the old table's files as orphans: its history, the tenants' last copy."""
    raise StorageError(
        f"the lakehouse catalog of this data dir ({data_dir / 'lakehouse' / 'catalog.db'}) has no events table, "
        f"but its warehouse holds one ({metadata.parent.parent}): the catalog was lost or emptied; nothing was written",
        hint=(
            "Put catalog.db back from a backup, or register the table it held: `headlessly lake register` (from "
            f"its newest metadata file, {metadata.name}), then `headlessly verify`. To start the lakehouse anew "
            "instead, move the lakehouse/ folder aside."
        ),
    )


def register(data_dir: Path) -> tuple[Any, Path]:
    """Register the events table left in this data dir's warehouse (its newest metadata file) with a local
    catalog that has none; StorageError when there is nothing to register or the catalog has a table. Each
    refusal is made before anything is (no catalog database, none of its SQL tables), and again once the
    catalog is open."""
    if configured():
        raise StorageError(
            "pyiceberg's configuration names the catalog here: register works on the local catalog "
            "(lakehouse/catalog.db) only; nothing was changed",
            hint="Register the table with that catalog's own tools.",
        )
    _refuse_registered(_local_to_read(data_dir))
    _registrable(data_dir)
    catalog = load(data_dir)
    with _local_lock(data_dir / "lakehouse"):
        _refuse_registered(catalog)
        metadata = _registrable(data_dir)
        _ensure_namespace(catalog)
        table = catalog.register_table(f"{NAMESPACE}.{TABLE}", str(metadata))
    return table, metadata


def _refuse_registered(catalog: Any | None) -> None:
    """Refuse to register a table with a catalog that has one."""
    stored = None if catalog is None else _stored_metadata_location(catalog)
    if stored is not None:
        raise StorageError(
            f"the lakehouse catalog already has the events table ({local_path(stored)}); nothing was changed",
            hint="register is for a catalog that lost its table: `headlessly verify` checks this one.",
        )


def _registrable(data_dir: Path) -> Path:
    """The newest metadata file of the table in this data dir's warehouse, to register; refused when there is
    none, or when the table was written in another data dir's warehouse."""
    metadata = newest_metadata(data_dir)
    if metadata is None:
        raise StorageError(
            f"no events table in {data_dir / 'lakehouse' / 'warehouse'} to register; nothing was changed",
            hint="`headlessly flush` makes the table.",
        )
    location = json.loads(metadata.read_text(encoding="utf-8")).get("location")
    if isinstance(location, str) and not inside(location, data_dir / "lakehouse" / "warehouse"):
        raise StorageError(  # (registered, every command would then refuse it as another data dir's)
            f"the events table in {metadata.parent.parent} was written in {local_path(location)}: the data dir "
            "was copied or moved; nothing was registered",
            hint="Move the data dir back where it was and register it there; or give the copy a lakehouse of "
            "its own by moving its `lakehouse/` folder aside (its events are then flushed anew from seq 1).",
        )
    return metadata


def _ensure_namespace(catalog: Any) -> None:
    from pyiceberg.exceptions import NamespaceAlreadyExistsError

    with suppress(NamespaceAlreadyExistsError):
        catalog.create_namespace(NAMESPACE)


def inside(location: str, folder: Path) -> bool:
    """Whether a local location lies in `folder`, also when either is reached through a symlink or a bind
    mount (the same folder under another name)."""
    if urllib.parse.urlparse(location).scheme not in ("", "file"):
        return False  # an object store: never this data dir's warehouse
    path = Path(os.path.realpath(local_path(location)))
    real = Path(os.path.realpath(folder))
    if path == real or real in path.parents:
        return True
    for parent in path.parents:
        with suppress(OSError):
            if os.path.samefile(parent, real):
                return True
    return False


def local_path(uri: str) -> str:
    """The local path of a location: a plain path as it is (it may hold '#' or '?'), a file URI's path."""
    parsed = urllib.parse.urlparse(uri)
    if not parsed.scheme:
        return os.path.normpath(uri)
    return os.path.normpath(parsed.path if parsed.scheme == "file" else uri)


@contextmanager
def _local_lock(folder: Path) -> Iterator[None]:
    import fcntl

    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def schema() -> Any:
    from pyiceberg.schema import Schema
    from pyiceberg.types import LongType, NestedField, StringType, TimestamptzType

    cols: list[tuple[str, Any, bool]] = [
        ("tenant", StringType(), True),
        ("seq", LongType(), True),
        ("id", StringType(), True),
        ("type", StringType(), True),
        ("entity_type", StringType(), True),
        ("target", StringType(), True),
        ("actor", StringType(), True),
        ("timestamp", TimestamptzType(), True),
        ("version", LongType(), True),
        ("data", StringType(), True),
        ("changes", StringType(), True),
        ("state", StringType(), True),
        ("reason", StringType(), False),
        ("hash", StringType(), True),
        ("caused_by", StringType(), False),
        ("prev_hash", StringType(), True),
    ]
    return Schema(*(NestedField(i, name, kind, required=req) for i, (name, kind, req) in enumerate(cols, start=1)))


def partition_spec(s: Any) -> Any:
    from pyiceberg.partitioning import PartitionField, PartitionSpec
    from pyiceberg.transforms import DayTransform, IdentityTransform

    return PartitionSpec(
        PartitionField(
            source_id=s.find_field("tenant").field_id, field_id=1000, transform=IdentityTransform(), name="tenant"
        ),
        PartitionField(
            source_id=s.find_field("timestamp").field_id, field_id=1001, transform=DayTransform(), name="timestamp_day"
        ),
    )


def events_table(catalog: Any) -> Any:
    """The table, created on first use (by whichever process gets there first)."""
    from pyiceberg.exceptions import NoSuchTableError, TableAlreadyExistsError
    from pyiceberg.table.sorting import SortField, SortOrder
    from pyiceberg.transforms import IdentityTransform

    identifier = f"{NAMESPACE}.{TABLE}"
    try:
        return catalog.load_table(identifier)  # the usual case: no create attempt, no stray metadata file
    except NoSuchTableError:
        pass
    _ensure_namespace(catalog)
    s = schema()
    order = SortOrder(SortField(source_id=s.find_field("seq").field_id, transform=IdentityTransform()))
    try:
        return catalog.create_table(
            identifier, schema=s, partition_spec=partition_spec(s), sort_order=order, properties=TABLE_PROPERTIES
        )
    except TableAlreadyExistsError:  # another flusher created it in between
        return catalog.load_table(identifier)


def missing_write_properties(table: Any) -> dict[str, str]:
    """WRITE_PROPERTIES the table does not have (a table made by an older version)."""
    return {k: v for k, v in WRITE_PROPERTIES.items() if table.metadata.properties.get(k) != v}


def watermark(table: Any, tenant: str) -> tuple[int, str]:
    """The last seq of `tenant` in the table and its hash (0 and the genesis hash when none)."""
    from ..store.events import GENESIS_HASH

    raw = table.metadata.properties.get(WATERMARK_PREFIX + tenant)
    if not raw:
        return 0, GENESIS_HASH
    seq, _, h = raw.partition(":")
    return int(seq), h


def watermarks(table: Any) -> dict[str, tuple[int, str]]:
    out = {}
    for key in table.metadata.properties:
        if key.startswith(WATERMARK_PREFIX):
            tenant = key[len(WATERMARK_PREFIX) :]
            out[tenant] = watermark(table, tenant)
    return out
