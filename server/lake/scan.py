"""A tenant's rows in the table, in seq order, read one file and one batch at a time.

Flushes and compactions write each file as a run of increasing seqs, and one tenant's files do not overlap,
so putting the files in order of their first seq and reading each a batch at a time gives the log in order
while holding one batch, not the tenant. Each file's seq column is read first (8 bytes a row) to find its
range and whether it is in order. A table that is not like that (files whose ranges overlap, delete files,
a file without one of our columns) is read whole by pyiceberg and sorted instead, as a table written by other
tools may need."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

CHUNK = 5_000  # rows per batch


@dataclass(frozen=True)
class _File:
    task: Any  # pyiceberg's FileScanTask
    first: int  # seq
    last: int
    rows: int  # of this tenant
    ordered: bool  # seqs strictly increasing through the file
    columns: frozenset[str]
    size: int = 0  # bytes of its column data, uncompressed (what reading it takes)


class TenantRows:
    """The rows of `tenant` in `table` (its current snapshot) that match `row_filter` (a pyiceberg expression
    on its columns, unbound; default all), planned on construction: only the files that may hold such rows
    are read. `total` and `last_seq` count the tenant's rows in those files, matching or not."""

    def __init__(self, table: Any, tenant: str, row_filter: Any = None) -> None:
        import pyarrow.compute as pc
        import pyiceberg.expressions
        from pyiceberg.expressions.visitors import bind, extract_field_ids
        from pyiceberg.io.pyarrow import expression_to_pyarrow

        ex: Any = pyiceberg.expressions  # its constructors are typed for bound terms; we pass names
        self.table, self.tenant = table, tenant
        cond = ex.EqualTo("tenant", tenant)
        if row_filter is not None:
            cond = ex.And(cond, row_filter)
        schema = table.schema()
        bound = bind(schema, cond, case_sensitive=True)
        self._match = expression_to_pyarrow(bound)
        self._needs = [schema.find_column_name(i) for i in sorted(extract_field_ids(bound))]
        self._cond = cond
        tasks = list(table.scan(row_filter=cond).plan_files())
        planned = [self._plan(task) for task in tasks]
        files = sorted((f for f in planned if f is not None and f.rows), key=lambda f: f.first)
        self._files = files
        self.total = sum(f.rows for f in files)
        self.last_seq = max((f.last for f in files), default=0)
        # Rows deleted by other engines (merge-on-read delete files), or files without the tenant or seq column
        # (legal for a partition's source column): only pyiceberg's own read gets them right.
        whole = any(task.delete_files for task in tasks) or None in planned
        self.streamed = not whole and all(a.last < b.first for a, b in pairwise(files))
        self._names = schema.column_names
        if whole:
            seq = self._whole(("seq",)).column("seq")
            self.total, self.last_seq = len(seq), pc.max(seq).as_py() if len(seq) else 0

    @property
    def spans(self) -> list[tuple[int, int, int, int]]:
        """Each file's first seq, last seq, rows of this tenant and bytes of column data uncompressed, in seq order."""
        return [(f.first, f.last, f.rows, f.size) for f in self._files]

    def batches(self, columns: tuple[str, ...] | None = None) -> Iterator[Any]:
        """The rows as Arrow record batches of at most CHUNK rows, in seq order, with `columns` (default all)."""
        for run in self.runs(columns):
            yield from run

    def runs(self, columns: tuple[str, ...] | None = None) -> Iterator[Iterator[Any]]:
        """The rows as runs of consecutive seqs, in seq order (a file each, read when its turn comes), each an
        iterator of record batches as `batches` gives them (to read newest first, reverse the list of runs)."""
        wanted = list(columns or self._names)
        if not self.streamed or any(not {*wanted, *self._needs} <= f.columns for f in self._files):
            yield iter(self._whole(tuple(wanted)).sort_by("seq").to_batches(max_chunksize=CHUNK))
            return
        for file in self._files:
            yield self._read(file, wanted)

    def hash_at(self, seq: int) -> str | None:
        """The hash of the row at `seq` (None when the table has none)."""
        import pyarrow.compute as pc
        import pyiceberg.expressions

        if not self.streamed:
            ex: Any = pyiceberg.expressions
            found = self._whole(("seq", "hash"), ex.EqualTo("seq", seq)).column("hash")
            return found[0].as_py() if len(found) else None
        for file in self._files:
            if file.first <= seq <= file.last:
                with self._parquet(file.task) as parquet:
                    rows = self._own(parquet.read(columns=["tenant", "seq", "hash"]))
                found = rows.filter(pc.equal(rows.column("seq"), seq)).column("hash")
                return found[0].as_py() if len(found) else None
        return None

    def _whole(self, columns: tuple[str, ...], also: Any = None) -> Any:
        """The matching rows (and `also`'s) read whole by pyiceberg, which applies delete files."""
        import pyiceberg.expressions

        ex: Any = pyiceberg.expressions
        cond = self._cond if also is None else ex.And(self._cond, also)
        return self.table.scan(row_filter=cond, selected_fields=columns).to_arrow()

    def _read(self, file: _File, wanted: list[str]) -> Iterator[Any]:
        import pyarrow as pa

        columns = list(dict.fromkeys([*wanted, *self._needs]))
        with self._parquet(file.task) as parquet:
            if not file.ordered:  # (a file another tool wrote): sorted in memory, one file
                rows = parquet.read(columns=columns).filter(self._match).sort_by("seq")
                yield from rows.select(wanted).to_batches(max_chunksize=CHUNK)
                return
            for batch in parquet.iter_batches(batch_size=CHUNK, columns=columns):
                rows = pa.Table.from_batches([batch]).filter(self._match)
                if rows.num_rows:
                    yield from rows.select(wanted).to_batches()

    def _plan(self, task: Any) -> _File | None:
        """The file's seq range and order; None for a file without a tenant or seq column."""
        import pyarrow.compute as pc

        with self._parquet(task) as parquet:
            columns = frozenset(parquet.schema_arrow.names)
            if not {"tenant", "seq"} <= columns:
                return None
            seq = self._own(parquet.read(columns=["tenant", "seq"])).column("seq")
            meta = parquet.metadata
            size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if not len(seq):
            return _File(task, 0, 0, 0, True, columns, size)
        ordered = len(seq) < 2 or bool(pc.all(pc.greater(seq[1:], seq[:-1])).as_py())
        bounds = pc.min_max(seq)
        return _File(task, bounds["min"].as_py(), bounds["max"].as_py(), len(seq), ordered, columns, size)

    def _own(self, rows: Any) -> Any:
        """`rows` of this tenant only (a file of a tenant's partition holds only its rows; checked anyway)."""
        import pyarrow.compute as pc

        tenant = rows.column("tenant")
        if pc.all(pc.equal(tenant, self.tenant)).as_py():
            return rows
        return rows.filter(pc.equal(tenant, self.tenant))

    @contextmanager
    def _parquet(self, task: Any) -> Iterator[Any]:
        import pyarrow.parquet as pq

        with self.table.io.new_input(task.file.file_path).open() as stream:
            yield pq.ParquetFile(stream)
