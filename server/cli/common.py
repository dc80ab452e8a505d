"""What every command shares: the command group, its error boundary, common options and output."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from ..config import ENV_DATA_DIR, Config

log = logging.getLogger("headlessly")


def given_dir(_ctx: click.Context, _param: click.Parameter, value: str) -> Path:
    """--data-dir, `~` expanded (as no shell does in `--data-dir=~/x` or an mcp.json `env`) before it is checked."""
    if not value:
        raise click.BadParameter("is empty: give a folder (`.` for this one)")
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise click.BadParameter(f"{str(path)!r} is a file, not a folder")
    if path.is_dir() and not os.access(path, os.R_OK | os.X_OK):
        raise click.BadParameter(f"{str(path)!r} is a folder this user may not read")
    return path


def existing_dir(ctx: click.Context, param: click.Parameter, value: str) -> Path:
    path = given_dir(ctx, param, value)
    if not path.is_dir():
        raise click.BadParameter(
            f"there is no data dir at {path} (a typo, or the wrong working directory? give the one `serve` uses, "
            f"with --data-dir or {ENV_DATA_DIR})"
        )
    return path


def finite(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):  # nan passes FloatRange's bounds: every comparison with it is false
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def actor_flag(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """An actor flag, checked here so that a mistyped one is refused rather than matching nothing."""
    from ..errors import HeadlesslyError
    from ..store.operations import check_actor

    if value is not None:
        try:
            check_actor(value)
        except HeadlesslyError as exc:
            raise click.BadParameter(exc.message) from None
    return value


def time_flag(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A time flag, checked here so that its error names the flag; passed on as given."""
    from ..timeutil import parse_time

    if value is not None:
        try:
            parse_time(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _data_dir(must_exist: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--data-dir; commands that only read or upkeep data refuse one that does not exist, rather than make it."""
    return click.option(
        "--data-dir",
        type=str,
        envvar=ENV_DATA_DIR,
        default="./.headlessly",
        show_default=True,
        callback=existing_dir if must_exist else given_dir,
        help=f"Where tenant databases, tokens and the lakehouse live (env {ENV_DATA_DIR}).",
    )


data_dir_option = _data_dir(must_exist=False)
existing_data_dir_option = _data_dir(must_exist=True)
schemas_option = click.option(
    "--schemas", "schema_dirs", multiple=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="An extra folder of noun definitions (repeatable); may add or redefine nouns.",
)  # fmt: skip


def fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"headlessly: {message}", err=True)
    sys.exit(code)


def tenant_flag(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
    """A --tenant flag (one, none, or repeated), checked before anything reads or prints it."""
    from ..errors import HeadlesslyError
    from ..store.tenants import check_tenant

    for name in value if isinstance(value, tuple) else [value] if value is not None else []:
        try:
            check_tenant(name)
        except HeadlesslyError as exc:
            raise click.BadParameter(exc.message) from None
    return value


@contextmanager
def lake_errors(doing: str, data_dir: Path) -> Iterator[None]:
    """A lakehouse that cannot be reached or read (a catalog that is down or damaged, a data file gone)
    ends the command with what failed, not a traceback; the cause is logged at debug level. Failures of
    the data dir itself (a tenant file being written) are left to the command line's own boundary."""
    import sqlite3

    from ..errors import HeadlesslyError

    try:
        yield
    except (HeadlesslyError, sqlite3.Error, click.exceptions.Exit, click.ClickException, click.Abort):
        raise
    except Exception as exc:
        from ..lake.catalog import inside

        name = exc.filename if isinstance(exc, OSError) else None
        if isinstance(name, str) and inside(name, data_dir) and not inside(name, data_dir / "lakehouse"):
            raise
        log.debug("the lakehouse failed while %s", doing, exc_info=True)
        fail(f"the lakehouse failed while {doing}: {lake_failure(exc)}", 1)


def lake_failure(exc: BaseException) -> str:
    """What went wrong with the lakehouse, and where to look."""
    from ..errors import HeadlesslyError

    if isinstance(exc, HeadlesslyError):  # a refusal of ours says what to do itself
        return f"{exc.message}; {exc.hint}"
    return (
        f"{describe(exc)}; check the catalog (<data-dir>/lakehouse/catalog.db, or .pyiceberg.yaml / "
        "PYICEBERG_CATALOG__HEADLESSLY__*) and its storage"
    )


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class _Main(click.Group):
    """A machine that refuses (a data dir that is not a writable folder, a full disk) ends a command with one
    line saying what and where, and exit status 1, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        import sqlite3

        from ..errors import HeadlesslyError, StorageError

        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `headlessly events | head`: the reader stopped; end as a SIGPIPE would
            sys.stderr.close()
            os._exit(128 + signal.SIGPIPE)
        except OSError as exc:
            log.debug("failed", exc_info=True)
            where = f" ({exc.filename})" if exc.filename else ""
            fail(f"{exc.strerror or describe(exc)}{where}: check the data dir and the free disk space", 1)
        except sqlite3.Error as exc:
            log.debug("failed", exc_info=True)
            fail(f"a database failed: {describe(exc)}: check the data dir and the free disk space", 1)
        except HeadlesslyError as exc:  # bad input is status 2, like a bad flag; a failing machine is 1
            fail(
                f"{exc.code}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""),
                1 if isinstance(exc, StorageError) else 2,
            )


def open_store(config: Config, serving: bool = False) -> Any:
    """The store of a command; only `serve` rebuilds keys built for other schemas (see store/reindex.py)."""
    from ..errors import SchemaError
    from ..schema import load_schemas
    from ..store import Hooks, Store

    try:
        schemas = load_schemas(config.schema_dirs)
    except SchemaError as exc:
        fail(f"bad schema: {exc}")
    hooks = Hooks()
    for module in config.hook_modules:
        try:
            hooks.load_module(module)
        except Exception as exc:  # an operator's module: say what failed and stop
            fail(f"cannot load hooks module {module!r}: {type(exc).__name__}: {exc}")
    never = hooks.unmatched(schemas)
    if never:
        fail(
            f"hooks registered for {', '.join(repr(p) for p in never)} would never run: no Noun.action or "
            "Noun.PastTense matches (names are case-sensitive), e.g. 'Contact.create', 'Contact.Created', "
            "'Deal.*', 'Deal.win', 'Deal.Won'"
        )
    return Store(config.data_dir, schemas, durability=config.durability, hooks=hooks, follow_schemas=serving)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="headlessly")
def main() -> None:
    """headlessly: an MCP server that gives AI agents a typed business database with an immutable event log."""
    os.umask(0o077)  # tenant files, tokens and the lakehouse are this user's alone, whatever folder they are in


def no_lake_table(data_dir: Path, then: str) -> str:
    """Where a command that only reads the events table found none (and made none), followed by `then` (what
    it was for, and what makes the table); or which file a configured SQLite catalog lacks."""
    from ..lake import catalog as cat

    if (file := cat.missing_catalog_file()) is not None:
        return missing_catalog(file)
    if cat.configured():
        return (
            "no events table in the catalog `headlessly` that pyiceberg's configuration names "
            f"(.pyiceberg.yaml or PYICEBERG_CATALOG__HEADLESSLY__*){then}"
        )
    return f"no lakehouse in {data_dir}{then}"


def missing_catalog(file: str) -> str:
    """What the read commands say of a configured SQLite catalog whose file is not there."""
    return (
        f"the catalog file {file} that pyiceberg's configuration names is not there, so there is no events table "
        "to read: check the uri of the catalog `headlessly` in .pyiceberg.yaml or PYICEBERG_CATALOG__HEADLESSLY__URI "
        "(a mistyped path, or one relative to another working directory?)"
    )


def short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


_ESCAPED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _one_line(cell: str) -> str:
    """`cell` with its control characters and line or paragraph separators shown escaped."""
    if cell.isprintable():
        return cell
    return "".join(
        _ESCAPED.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")
        if unicodedata.category(c) in ("Cc", "Zl", "Zp")
        else c
        for c in cell
    )


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Aligned columns, one line per row: a cell's control characters and line breaks are shown escaped."""
    rows = [[_one_line(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def verify_progress(tenant: str) -> Callable[[int, str], None]:
    """What `store.verify` reports as it goes: a line on stderr as it starts, and every 10,000 events of each pass."""
    return lambda n, what: click.echo(f"  {tenant}: {f'{n} events ' if n else ''}{what}", err=True)


def undefined_warning(found: dict[str, dict[str, int]]) -> str:
    """What verify says of entities of types its schemas do not define (not a failure: nothing is damaged)."""
    from ..store.undefined import describe

    return (
        f"entities of types these schemas do not define are kept, but no tool reaches them: {describe(found)}; "
        "if the server runs with --schemas, give verify the same ones; otherwise restore each noun's definition "
        "to reach them again (or leave it, if they were removed on purpose)"
    )


def echo_verify(report: dict[str, Any]) -> None:
    """The problems and warnings of a verify run after a command (each on its own line, indented)."""
    for problem in report["problems"]:
        click.echo(f"  - {problem}")
    if report.get("undefinedTypes"):
        click.echo(f"  warning: {undefined_warning(report['undefinedTypes'])}")
