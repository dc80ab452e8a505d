"""The `headlessly` command: serve, token, events, verify."""

from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import click

from .config import ENV_ACTOR, ENV_DATA_DIR, ENV_DURABILITY, ENV_TENANT, SESSIONS_PER_TOKEN, Config

log = logging.getLogger("headlessly")


def _existing(_ctx: click.Context, _param: click.Parameter, value: Path) -> Path:
    path = Path(value).expanduser()
    if not path.is_dir():
        raise click.BadParameter(
            f"there is no data dir at {path} (a typo, or the wrong working directory? give the one `serve` uses, "
            f"with --data-dir or {ENV_DATA_DIR})"
        )
    return path


def _finite(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    if not math.isfinite(value):  # nan passes FloatRange's bounds: every comparison with it is false
        raise click.BadParameter(f"{value} is not a finite number")
    return value


def _time(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A time flag, checked here so that its error names the flag; passed on as given."""
    from .timeutil import parse_time

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
        type=click.Path(file_okay=False, path_type=Path),
        envvar=ENV_DATA_DIR,
        default=Path("./.headlessly"),
        show_default=True,
        callback=_existing if must_exist else lambda _ctx, _param, value: Path(value).expanduser(),
        help=f"Where tenant databases, tokens and the lakehouse live (env {ENV_DATA_DIR}).",
    )


data_dir_option = _data_dir(must_exist=False)
existing_data_dir_option = _data_dir(must_exist=True)
schemas_option = click.option(
    "--schemas", "schema_dirs", multiple=True, type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="An extra folder of noun definitions (repeatable); may add or redefine nouns.",
)  # fmt: skip


def _fail(message: str, code: int = 2) -> NoReturn:
    click.echo(f"headlessly: {message}", err=True)
    sys.exit(code)


def _check_tenant_name(tenant: str) -> None:
    from .errors import HeadlesslyError
    from .store.tenants import check_tenant

    try:
        check_tenant(tenant)
    except HeadlesslyError as exc:
        _fail(exc.message)


@contextmanager
def _lake_errors(doing: str, data_dir: Path) -> Iterator[None]:
    """A lakehouse that cannot be reached or read (a catalog that is down or damaged, a data file gone)
    ends the command with what failed, not a traceback; the cause is logged at debug level. Failures of
    the data dir itself (a tenant file being written) are left to the command line's own boundary."""
    import sqlite3

    from .errors import HeadlesslyError

    try:
        yield
    except (HeadlesslyError, sqlite3.Error, click.exceptions.Exit, click.ClickException, click.Abort):
        raise
    except Exception as exc:
        from .lake.catalog import inside

        name = exc.filename if isinstance(exc, OSError) else None
        if isinstance(name, str) and inside(name, data_dir) and not inside(name, data_dir / "lakehouse"):
            raise
        log.debug("the lakehouse failed while %s", doing, exc_info=True)
        _fail(f"the lakehouse failed while {doing}: {_lake_failure(exc)}", 1)


def _lake_failure(exc: BaseException) -> str:
    """What went wrong with the lakehouse, and where to look."""
    from .errors import HeadlesslyError

    if isinstance(exc, HeadlesslyError):  # a refusal of ours says what to do itself
        return f"{exc.message}; {exc.hint}"
    return (
        f"{_describe(exc)}; check the catalog (<data-dir>/lakehouse/catalog.db, or .pyiceberg.yaml / "
        "PYICEBERG_CATALOG__HEADLESSLY__*) and its storage"
    )


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class _Main(click.Group):
    """A machine that refuses (a data dir that is not a writable folder, a full disk) ends a command with one
    line saying what and where, and exit status 1, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        import sqlite3

        from .errors import HeadlesslyError, StorageError

        try:
            return super().invoke(ctx)
        except BrokenPipeError:  # `headlessly events | head`: the reader stopped; end as a SIGPIPE would
            sys.stderr.close()
            os._exit(128 + signal.SIGPIPE)
        except OSError as exc:
            log.debug("failed", exc_info=True)
            where = f" ({exc.filename})" if exc.filename else ""
            _fail(f"{exc.strerror or _describe(exc)}{where}: check the data dir and the free disk space", 1)
        except sqlite3.Error as exc:
            log.debug("failed", exc_info=True)
            _fail(f"a database failed: {_describe(exc)}: check the data dir and the free disk space", 1)
        except HeadlesslyError as exc:  # bad input is status 2, like a bad flag; a failing machine is 1
            _fail(
                f"{exc.code}: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""),
                1 if isinstance(exc, StorageError) else 2,
            )


def _open_store(config: Config, serving: bool = False) -> Any:
    """The store of a command; only `serve` rebuilds keys built for other schemas (see store/reindex.py)."""
    from .errors import SchemaError
    from .schema import load_schemas
    from .store import Hooks, Store

    try:
        schemas = load_schemas(config.schema_dirs)
    except SchemaError as exc:
        _fail(f"bad schema: {exc}")
    hooks = Hooks()
    for module in config.hook_modules:
        try:
            hooks.load_module(module)
        except Exception as exc:  # an operator's module: say what failed and stop
            _fail(f"cannot load hooks module {module!r}: {type(exc).__name__}: {exc}")
    never = hooks.unmatched(schemas)
    if never:
        _fail(
            f"hooks registered for {', '.join(repr(p) for p in never)} would never run: no Noun.action or "
            "Noun.PastTense matches (names are case-sensitive), e.g. 'Contact.create', 'Contact.Created', "
            "'Deal.*', 'Deal.win', 'Deal.Won'"
        )
    return Store(config.data_dir, schemas, durability=config.durability, hooks=hooks, follow_schemas=serving)


@click.group(cls=_Main, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(package_name="headlessly")
def main() -> None:
    """headlessly: an MCP server that gives AI agents a typed business database with an immutable event log."""


@main.command()
@click.option(
    "--transport",
    type=click.Choice(["stdio", "http", "sse"]),
    default="stdio",
    show_default=True,
    help="stdio for local clients; http (streamable HTTP at /mcp) or sse (at /sse) to serve over the network.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    callback=lambda _ctx, _param, value: value[1:-1] if value.startswith("[") and value.endswith("]") else value,
    help="Address to bind for http/sse (an IPv6 one with or without brackets).",
)
@click.option(
    "--port",
    default=8000,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port for http/sse (0 picks a free one).",
)
@click.option(
    "--no-auth", is_flag=True, help="http/sse without tokens, tenant and actor from flags. Only on a loopback address."
)
@data_dir_option
@click.option(
    "--tenant",
    envvar=ENV_TENANT,
    default="default",
    show_default=True,
    help=f"Tenant for stdio and --no-auth (env {ENV_TENANT}).",
)
@click.option(
    "--actor",
    envvar=ENV_ACTOR,
    default=None,
    help=f"Actor for stdio and --no-auth (env {ENV_ACTOR}); default agent_<client name>.",
)
@schemas_option
@click.option(
    "--hooks",
    "hook_modules",
    multiple=True,
    help="A Python module whose register(hooks) adds BEFORE/AFTER hooks (repeatable).",
)
@click.option(
    "--durability",
    type=click.Choice(["normal", "full"]),
    envvar=ENV_DURABILITY,
    default="normal",
    show_default=True,
    help=f"SQLite synchronous mode: normal survives a process crash, full also a power cut (env {ENV_DURABILITY}).",
)
@click.option("--flush-interval", type=click.FloatRange(min=0.1, max=86400.0), default=5.0, show_default=True,
              callback=_finite,
              help="Seconds between background flushes of new events to the Iceberg table (one more at shutdown).")  # fmt: skip
@click.option("--no-flush", is_flag=True, help="No background flush (run `headlessly flush` yourself).")
@click.option(
    "--sessions-per-token",
    type=click.IntRange(min=1),
    default=SESSIONS_PER_TOKEN,
    show_default=True,
    help="http: the most streamable-HTTP sessions one token may hold open (so no token can fill the server's).",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
def serve(transport: str, host: str, port: int, no_auth: bool, data_dir: Path, tenant: str, actor: str | None,
          schema_dirs: tuple[Path, ...], hook_modules: tuple[str, ...], durability: str, flush_interval: float,
          no_flush: bool, sessions_per_token: int, log_level: str) -> None:  # fmt: skip
    """Run the MCP server (logs go to stderr)."""
    from .logsetup import log_to_stderr

    log_to_stderr(log_level)
    from .errors import HeadlesslyError
    from .store.operations import check_actor
    from .store.tenants import check_tenant

    if transport == "stdio" or no_auth:
        try:
            check_tenant(tenant)
            if actor is not None:
                check_actor(actor)
        except HeadlesslyError as exc:
            _fail(exc.message)
    else:  # with tokens each token names its tenant and actor
        given = click.get_current_context().get_parameter_source
        ignored = [
            f"--{name} ({env})"
            for name, env in (("tenant", ENV_TENANT), ("actor", ENV_ACTOR))
            if given(name) != click.core.ParameterSource.DEFAULT
        ]
        if ignored:
            log.warning(
                "%s ignored: with tokens, each token names its tenant and actor (--no-auth serves one from the flags)",
                " and ".join(ignored),
            )
    if (
        no_flush
        and click.get_current_context().get_parameter_source("flush_interval") != click.core.ParameterSource.DEFAULT
    ):
        _fail("--flush-interval and --no-flush contradict each other: give one of them")
    if transport != "stdio" and no_auth and not _is_loopback(host):
        _fail(
            f"--no-auth is refused on {host}: without tokens the server may only listen on a loopback address (127.0.0.1, ::1, localhost)"
        )
    config = Config(
        data_dir=data_dir,
        durability=durability,
        schema_dirs=list(schema_dirs),
        hook_modules=list(hook_modules),
        tenant=tenant,
        actor=actor,
    )
    store = _open_store(config, serving=True)  # bad schemas or hooks are refused before anything is made
    _check_writable(data_dir)
    _warn_if_exposed(data_dir)
    _stop_on_signals(stdio=transport == "stdio")
    background = None
    if not no_flush:
        from .lake.background import BackgroundFlush

        background = BackgroundFlush(store, flush_interval, list(schema_dirs), log_level)
        background.start()

    def shut_down() -> None:
        if background is not None:
            background.stop()  # and one last flush
        store.close()

    try:
        if transport == "stdio":
            _serve_stdio(store, config, shut_down)
        else:
            _serve_http(store, config, transport, host, port, no_auth, sessions_per_token)
    finally:
        _ignore_signals()  # the shutdown is under way: let its final flush finish
        log.info("shutting down: %sexit (further signals are ignored)", "a last flush, then " if background else "")
        shut_down()


def _check_writable(data_dir: Path) -> None:
    """Refuse to start on a data dir no write could reach, rather than fail every write after a handshake."""
    import tempfile

    from .config import private_dir

    try:
        private_dir(data_dir)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        _fail(f"cannot write in the data dir {data_dir}: {exc.strerror or exc}", 1)


def _warn_if_exposed(data_dir: Path) -> None:
    """A data dir (or what it holds) that other local users may read, e.g. made by an older version."""
    exposed = [
        f"{path} ({mode:o})"
        for path in (data_dir, data_dir / "tenants", data_dir / "lakehouse", data_dir / "tokens.db")
        if path.exists() and (mode := path.stat().st_mode & 0o777) & 0o077
    ]
    if exposed:
        log.warning(
            "readable by other local users: %s; `chmod -R go-rwx %s` keeps tenant data and tokens to this user",
            ", ".join(exposed),
            data_dir,
        )


def _ignore_signals() -> None:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _stop_on_signals(stdio: bool) -> None:
    """SIGTERM (what supervisors, systemd and `docker stop` send) ends the server through its shutdown, so the
    last flush runs; over stdio Ctrl-C (SIGINT) does too. This covers start-up: once serving, stdio watches
    the signals itself (_serve_stdio), and over HTTP uvicorn holds them while it drains connections (see
    listen.py) and raises SIGTERM again when it is done: it lands here then."""

    def stop(_signum: int, _frame: object) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    if stdio:
        signal.signal(signal.SIGINT, stop)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_checks(shown_host: str, no_auth: bool) -> Any:
    """Without tokens, only requests addressed to a loopback name may in, so a web page cannot reach the
    server through DNS rebinding (whatever loopback spelling it listens on: 127.0.0.2, [0:0::1]...).
    With tokens the token is the check: any Host may in, so a reverse proxy can pass its own name."""
    from mcp.server.transport_security import TransportSecuritySettings

    if not no_auth:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    names = list(dict.fromkeys([shown_host, "127.0.0.1", "localhost", "[::1]"]))
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True,
        allowed_hosts=[h for name in names for h in (name, f"{name}:*")],
        allowed_origins=[o for name in names for o in (f"http://{name}", f"http://{name}:*")],
    )


def _serve_stdio(store: Any, config: Config, shut_down: Callable[[], None]) -> None:
    """Serve until the client closes stdin, or SIGTERM/SIGINT. On a signal the session stops taking
    requests, `shut_down` runs (the final flush) and the process leaves at once: the SDK's thread reading
    stdin stays blocked in read() for as long as the client keeps the pipe open (a terminal, `docker run
    -i`), and neither a cancellation nor the interpreter's exit would wait less."""
    import anyio

    from .auth.identity import LocalIdentity
    from .tools.app import build_server

    server = build_server(store, LocalIdentity(config.tenant, config.actor), inline=True)
    log.info("headlessly serving MCP over stdio (data dir %s, tenant %s)", config.data_dir, config.tenant)

    async def run() -> None:
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:

                async def on_signal() -> None:
                    async for signum in signals:
                        log.info("%s: shutting down", signal.Signals(signum).name)
                        serving.cancel()
                        code = 0
                        try:
                            await anyio.to_thread.run_sync(shut_down)
                        except BaseException:
                            log.exception("the shutdown failed")
                            code = 1
                        finally:
                            logging.shutdown()
                            sys.stderr.flush()
                            os._exit(code)

                tg.start_soon(on_signal)
                with anyio.CancelScope() as serving:
                    await server.run_stdio_async()
                tg.cancel_scope.cancel()  # stdin closed: the caller shuts down
            # Leaving the receiver puts the signals back to their defaults (death): the shutdown that
            # follows (the final flush) is already under way, so further signals are ignored instead.
            _ignore_signals()
            log.info("the client closed stdin")

    anyio.run(run)


def _serve_http(
    store: Any, config: Config, transport: str, host: str, port: int, no_auth: bool, sessions_per_token: int
) -> None:
    from .auth.identity import LocalIdentity
    from .auth.sessions import limit_sessions_per_token
    from .auth.tokens import TokenStore
    from .listen import listen
    from .tools.app import build_server

    tokens = None if no_auth else TokenStore(config.data_dir)
    shown_host = f"[{host}]" if ":" in host else host
    base_url = f"http://{shown_host}:{port}"
    server = build_server(store, LocalIdentity(config.tenant, config.actor) if no_auth else None, tokens, base_url)
    security = _host_checks(shown_host, no_auth)
    if transport == "http":
        app = server.streamable_http_app(host=host, transport_security=security)
        if tokens is not None:
            limit_sessions_per_token(app, server.session_manager, sessions_per_token)
    else:
        app = server.sse_app(host=host, transport_security=security)
    path = "/mcp" if transport == "http" else "/sse"
    auth = "no auth (loopback only)" if no_auth else "bearer tokens required"

    def announce(bound: int) -> None:
        # The first line on stderr that a supervisor (or a test) can wait for.
        print(
            f"headlessly listening on http://{shown_host}:{bound}{path} ({transport}, {auth})",
            file=sys.stderr,
            flush=True,
        )

    try:
        listen(app, host, port, announce)
    finally:
        if tokens is not None:
            tokens.close()


# ---- tokens ---------------------------------------------------------------------------------------


@main.group()
def token() -> None:
    """Create, list and revoke bearer tokens for http/sse (stored only as hashes)."""


@token.command("create")
@click.option("--tenant", required=True, help="The tenant this token reaches (and no other).")
@click.option("--actor", required=True, help="The actor recorded on every event written with this token.")
@click.option("--read-only", is_flag=True, help="fetch and search only; do is forbidden.")
@click.option("--note", default=None, help="A label to recognise the token by in `token list`.")
@data_dir_option
def token_create(tenant: str, actor: str, read_only: bool, note: str | None, data_dir: Path) -> None:
    """Create a token and print it once: it cannot be shown again."""
    from .auth.tokens import TokenStore
    from .errors import HeadlesslyError

    tokens = TokenStore(data_dir)
    try:
        secret, info = tokens.create(tenant, actor, read_only, note)
    except HeadlesslyError as exc:
        _fail(exc.message)
    finally:
        tokens.close()
    click.echo(secret)
    click.echo(
        f"token {info.id} for tenant {info.tenant}, actor {info.actor}{' (read-only)' if read_only else ''}: "
        "store it now, it is not shown again",
        err=True,
    )


@token.command("list")
@click.option("--tenant", default=None, help="Only this tenant's tokens.")
@click.option("--all", "include_revoked", is_flag=True, help="Include revoked tokens.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@existing_data_dir_option
def token_list(tenant: str | None, include_revoked: bool, as_json: bool, data_dir: Path) -> None:
    """List tokens (ids and who they stand for; never the secrets)."""
    from .auth.tokens import TokenStore

    if tenant is not None:
        _check_tenant_name(tenant)
    tokens = TokenStore(data_dir)
    rows = tokens.list(tenant, include_revoked)
    tokens.close()
    if as_json:
        for t in rows:
            click.echo(json.dumps(t.to_dict()))
        return
    _table(["id", "tenant", "actor", "access", "created", "revoked", "note"],
           [[t.id, t.tenant, t.actor, "read-only" if t.read_only else "read-write", t.created_at, t.revoked_at or "", t.note or ""] for t in rows])  # fmt: skip


@token.command("revoke")
@click.argument("token_id")
@existing_data_dir_option
def token_revoke(token_id: str, data_dir: Path) -> None:
    """Revoke a token by its id (or the whole token): every later request with it gets HTTP 401."""
    from .auth.tokens import TokenStore
    from .errors import HeadlesslyError

    tokens = TokenStore(data_dir)
    try:
        info = tokens.revoke(token_id)
    except HeadlesslyError as exc:
        _fail(exc.message)
    finally:
        tokens.close()
    click.echo(f"revoked token {info.id} (tenant {info.tenant}, actor {info.actor})")


# ---- audit and verification ----------------------------------------------------------------------


@main.command()
@click.option(
    "--tenant", envvar=ENV_TENANT, default="default", show_default=True, help=f"The tenant (env {ENV_TENANT})."
)
@click.option(
    "--type", "type_", default=None, help="Event type, exact or a glob: Contact.Qualified, Deal.*, *.Deleted."
)
@click.option("--target", default=None, help="An entity's $id: its whole history.")
@click.option("--actor", default=None, help="Only events by this actor.")
@click.option("--since", default=None, callback=_time, help="From this time (RFC 3339 or a date), inclusive.")
@click.option("--until", default=None, callback=_time, help="Up to this time, inclusive.")
@click.option(
    "--filter",
    "filter_json",
    default=None,
    help='A search filter as JSON, as in the search tool: {"version": {"$gt": 3}}.',
)
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1), help="At most this many events.")
@click.option("--newest-first", is_flag=True, help="Newest first (default: oldest first).")
@click.option(
    "--from-lake",
    is_flag=True,
    help="Read the Iceberg table instead of the live store (flushed events; not with --filter).",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON event per line instead of a table.")
@data_dir_option
@schemas_option
def events(tenant: str, type_: str | None, target: str | None, actor: str | None, since: str | None, until: str | None,
           filter_json: str | None, limit: int, newest_first: bool, from_lake: bool, as_json: bool, data_dir: Path,
           schema_dirs: tuple[Path, ...]) -> None:  # fmt: skip
    """Audit from the shell: a tenant's events, filtered as in search."""

    if from_lake:
        if filter_json:
            _fail(
                "--filter applies to the live store; with --from-lake use --type, --target, --actor, --since, --until"
            )
        from .lake import catalog as cat
        from .lake.history import lake_events

        _check_tenant_name(tenant)
        with _lake_errors("reading the events table", data_dir):
            table = _lake_table_if_any(data_dir)
            if table is None:
                _fail(f"no lakehouse in {data_dir}: `headlessly flush` (or a running server) fills it")
            in_table = cat.watermarks(table)
            if tenant not in in_table:
                _fail(
                    f"tenant {tenant!r} has no events in the table; its tenants: {', '.join(sorted(in_table)) or 'none'}"
                )
            try:
                found = lake_events(table, tenant, type_, target, actor, since, until, limit + 1, newest_first)
            except ValueError as exc:
                _fail(str(exc))
        _print_events(found[:limit], as_json)
        if len(found) > limit:
            click.echo(f"(the first {limit:,} events; more are in the table: raise --limit to see them)", err=True)
        return

    flags: dict[str, Any] = {
        key: value for key, value in (("type", type_), ("target", target), ("actor", actor)) if value is not None
    }
    if since or until:
        flags["timestamp"] = {**({"$gte": since} if since else {}), **({"$lte": until} if until else {})}
    flt: Any = flags or None
    if filter_json:
        try:
            given = json.loads(filter_json)
        except json.JSONDecodeError as exc:
            _fail(f"--filter is not JSON: {exc}")
        flt = {"$and": [given, flags]} if flags else given  # both hold, also on the same field
    store = _open_store(Config(data_dir=data_dir, schema_dirs=list(schema_dirs)))
    rows: list[dict[str, Any]] = []
    try:
        if not store.pool.exists(tenant):
            _fail(f"tenant {tenant!r} does not exist in {data_dir}")
        cursor = None
        while len(rows) < limit:
            page = store.events(tenant, flt, "-seq" if newest_first else "seq", min(100, limit - len(rows)), cursor)
            rows.extend(page["results"])
            cursor = page["cursor"]
            if not cursor:
                break
    finally:
        store.close()
    _print_events(rows, as_json)
    if cursor:
        total = f"{page['total']:,}{' or more' if page.get('totalIsLowerBound') else ''}"
        click.echo(f"(the first {len(rows):,} of {total} events; raise --limit to see more)", err=True)


def _print_events(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        for e in rows:
            click.echo(json.dumps(e, ensure_ascii=False))
        return
    _table(["seq", "timestamp", "type", "target", "v", "actor", "data"],
           [[str(e["seq"]), e["timestamp"], e["type"], e["target"], str(e["version"]), e["actor"], _short(e["data"])] for e in rows])  # fmt: skip


@main.command()
@click.option("--tenant", default=None, help="One tenant (default: every tenant in the data dir).")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.option("--no-lake", is_flag=True, help="Skip comparing the Iceberg table with the log.")
@existing_data_dir_option
@schemas_option
def verify(tenant: str | None, as_json: bool, no_lake: bool, data_dir: Path, schema_dirs: tuple[Path, ...]) -> None:
    """Recompute every hash chain, re-derive every entity from its events, and compare the Iceberg
    table with the log (no gaps, no duplicates, same hashes up to the watermark); exit 1 on any problem."""
    from .errors import HeadlesslyError, TenantBusy

    if tenant is not None:
        _check_tenant_name(tenant)
    store = _open_store(Config(data_dir=data_dir, schema_dirs=list(schema_dirs)))
    ok = True
    try:
        here = store.tenants()
        in_table: dict[str, tuple[int, str]] = {}
        table = None
        try:
            table = None if no_lake else _lake_table_if_any(data_dir)
            if table is not None:
                from .lake import catalog as cat

                in_table = cat.watermarks(table)
        except Exception as exc:  # the logs are still checked: say why the table is not
            log.debug("opening the lakehouse failed", exc_info=True)
            table, ok = None, False
            unread = f"the lakehouse could not be read, so it was not compared with the logs: {_lake_failure(exc)}"
            click.echo(
                json.dumps({"lake": {"ok": False, "problems": [unread]}}) if as_json else f"lake: NOT CHECKED: {unread}"
            )
        names = [tenant] if tenant is not None else sorted({*here, *in_table})
        if not names:
            click.echo(f"no tenants in {data_dir}", err=True)
        for name in names:
            if name not in here and name in in_table:  # its log is gone: the table is all that is left
                ok = False
                lost = (
                    f"it has {in_table[name][0]} events in the table but no database here; "
                    f"`headlessly restore --tenant {name}` rebuilds it from the table"
                )
                if as_json:
                    click.echo(json.dumps({"tenant": name, "ok": False, "problems": [lost]}))
                else:
                    click.echo(f"{name}: FAILED: {lost}")
                continue
            try:
                report = store.verify(
                    name, progress=lambda n, what, t=name: click.echo(f"  {t}: {n} events {what}", err=True)
                )
            except TenantBusy as exc:  # another tenant's check need not wait for this one
                ok = False
                if as_json:
                    click.echo(json.dumps({"tenant": name, "ok": False, "notChecked": exc.message}))
                else:
                    click.echo(f"{name}: NOT CHECKED: {exc.message}")
                continue
            except HeadlesslyError as exc:
                if tenant is not None:
                    _fail(exc.message)
                ok = False  # (an unreadable file): said, and the other tenants are still checked
                if as_json:
                    click.echo(json.dumps({"tenant": name, "ok": False, "problems": [exc.message]}))
                else:
                    click.echo(f"{name}: FAILED: {exc.message}")
                continue
            if table is not None:
                from .lake import catalog as cat
                from .lake.restore import check_tenant as check_lake

                try:
                    lake_problems = check_lake(store, table, name)
                    report["lake"] = {"watermark": cat.watermark(table, name)[0]}
                except Exception as exc:  # one tenant's unreadable files: said, and the others still checked
                    log.debug("checking the lakehouse failed", exc_info=True)
                    lake_problems = [f"its events in the table could not be read: {_lake_failure(exc)}"]
                report["problems"].extend(lake_problems)
                report["ok"] = report["ok"] and not lake_problems
            ok = ok and report["ok"]
            if as_json:
                click.echo(json.dumps(report))
                continue
            status = "ok" if report["ok"] else "FAILED"
            in_lake = ""
            if "lake" in report:  # the watermark: how far the table is known to hold this log, not a row count
                flushed = report["lake"]["watermark"]
                behind = report["events"] - flushed
                in_lake = f", flushed up to seq {flushed}" + (f" ({behind} not yet)" if behind > 0 else "")
            click.echo(
                f"{name}: {status}: {report['events']} events{in_lake}, {report['entities']} entities, head {report['headHash'][:16]}"
            )
            for problem in report["problems"]:
                click.echo(f"  - {problem}")
            if report.get("builtForOtherSchemas"):
                click.echo(
                    f"  (lookup keys and full text of {', '.join(report['builtForOtherSchemas'])} were built for other "
                    "schemas: not checked; `serve` rebuilds them when it opens the tenant)"
                )
            if any("lookup key" in p or "full text" in p for p in report["problems"]):
                click.echo(
                    f"  lookup keys and full text can be rebuilt from the states: headlessly reindex --tenant {name}"
                )
    finally:
        store.close()
    sys.exit(0 if ok else 1)


def _lake_table_if_any(data_dir: Path) -> Any:
    """The events table when a lakehouse is configured or exists locally; None otherwise."""
    import os

    configured = any(k.startswith("PYICEBERG_CATALOG__HEADLESSLY__") for k in os.environ)
    if not configured and not (data_dir / "lakehouse" / "catalog.db").exists():
        return None
    from .lake import catalog as cat

    return cat.open_table(data_dir)


# ---- the lakehouse --------------------------------------------------------------------------------


@main.command()
@click.option("--tenant", "tenants", multiple=True, help="Only this tenant (repeatable; default: every tenant).")
@existing_data_dir_option
@schemas_option
def flush(tenants: tuple[str, ...], data_dir: Path, schema_dirs: tuple[Path, ...]) -> None:
    """Send every event not yet in the Iceberg table to it, exactly once, with progress."""
    from .errors import HeadlesslyError, TenantBusy
    from .lake import catalog as cat
    from .lake.flusher import Flusher, LakeDiverged

    store = _open_store(Config(data_dir=data_dir, schema_dirs=list(schema_dirs)))
    failed: list[str] = []
    problems = ""
    try:
        present = store.tenants()
        names = list(dict.fromkeys(tenants)) or present
        for name in tenants:
            if name not in present:
                _fail(f"tenant {name!r} does not exist in {data_dir}")
        flusher = Flusher(store)
        with _lake_errors("opening the events table", data_dir):
            flusher.table  # noqa: B018 (opened now, so a catalog that fails is said before any progress)
        backlog, busy = 0, []
        for name in names:
            try:
                backlog += max(0, store.head(name)[0] - cat.watermark(flusher.table, name)[0])
            except TenantBusy:
                busy.append(name)  # waited for once already: not again in the flush
            except HeadlesslyError:
                pass  # unreadable: the flush names it, and still sends the other tenants
        with (
            click.progressbar(length=backlog, label="flushing", file=sys.stderr, show_pos=True) as bar,
            _lake_errors("flushing", data_dir),
        ):
            try:
                report = flusher.flush([n for n in names if n not in busy], progress=lambda _t, n: bar.update(n))
            except LakeDiverged as exc:  # some tenants could not be sent: named below, the others were
                report, failed, problems = exc.report, exc.tenants, str(exc)
        busy += report.busy
        for name, n in report.tenants.items():
            click.echo(f"  {name}: {n} events (oldest was {report.lag_seconds[name]:.1f}s old)", err=True)
    finally:
        store.close()
    click.echo(f"flushed {report.events} events of {len(names) - len(busy) - len(failed)} tenant(s)")
    if busy:
        click.echo(
            f"headlessly: not flushed: {', '.join(busy)} (being restored, reindexed or rebuilt by another "
            "process); run flush again when that has finished",
            err=True,
        )
    if failed:
        click.echo(f"headlessly: not flushed: {problems}", err=True)
    if busy or failed:
        sys.exit(1)


@main.command()
@click.option("--tenant", required=True, help="The tenant to rebuild from the table.")
@click.option(
    "--overwrite", is_flag=True, help="Replace a tenant that has events (its file is kept aside as .replaced-<time>)."
)
@data_dir_option
@schemas_option
def restore(tenant: str, overwrite: bool, data_dir: Path, schema_dirs: tuple[Path, ...]) -> None:
    """Rebuild a tenant's database from the Iceberg table (events, hashes and state), then verify it."""
    from .lake.restore import restore_tenant

    store = _open_store(Config(data_dir=data_dir, schema_dirs=list(schema_dirs)))
    try:
        label = f"restoring {tenant}"
        with click.progressbar(length=1, label=label, file=sys.stderr, show_percent=True) as bar:
            # One step more than the events: the bar reaches 100% only once entities and indexes are built.
            def progress(done: int, total: int) -> None:
                bar.length = total + 1
                bar.update(done - bar.pos)

            def indexing() -> None:
                bar.label, bar.show_eta = f"{label} (indexing)", False  # the ETA of the events says nothing here
                bar.render_progress()

            with _lake_errors(f"reading tenant {tenant}'s events", data_dir):
                count = restore_tenant(store, tenant, overwrite, progress, indexing)
            bar.update(1)
        report = store.verify(tenant)
    finally:
        store.close()
    click.echo(f"restored {count} events into tenant {tenant}; verify: {'ok' if report['ok'] else 'FAILED'}")
    sys.exit(0 if report["ok"] else 1)


@main.command()
@click.option("--tenant", required=True, help="The tenant whose lookup keys and full text to rebuild.")
@existing_data_dir_option
@schemas_option
def reindex(tenant: str, data_dir: Path, schema_dirs: tuple[Path, ...]) -> None:
    """Rebuild a tenant's lookup keys and full text from its entities' current states (every noun), e.g. when
    verify reports keys that do not follow from the states. Events and states are not touched. Needs the
    tenant to itself: stop the servers using this --data-dir first."""
    from .store.reindex import reindex_tenant
    from .store.tenants import tenant_path

    store = _open_store(Config(data_dir=data_dir, schema_dirs=list(schema_dirs)))
    try:
        with store.pool.lease(tenant, create=False):
            pass  # opened once: an older file is migrated first
        store.pool.forget(tenant)
        nouns = reindex_tenant(tenant_path(data_dir, tenant), store.schemas)
        report = store.verify(tenant)
    finally:
        store.close()
    click.echo(
        f"rebuilt the lookup keys and full text of {len(nouns)} nouns in tenant {tenant}; verify: {'ok' if report['ok'] else 'FAILED'}"
    )
    for problem in report["problems"]:
        click.echo(f"  - {problem}")
    sys.exit(0 if report["ok"] else 1)


@main.group()
def lake() -> None:
    """Upkeep of the Iceberg table."""


@lake.command("maintain")
@click.option(
    "--retain-days",
    default=7.0,
    show_default=True,
    type=click.FloatRange(min=0),
    callback=_finite,
    help="Expire snapshots older than this.",
)
@click.option("--orphan-hours", default=1.0, show_default=True, type=click.FloatRange(min=0), callback=_finite,
              help="Remove unreferenced data and metadata files older than this (younger ones may belong to a commit in flight).")  # fmt: skip
@data_dir_option
def lake_maintain(retain_days: float, orphan_hours: float, data_dir: Path) -> None:
    """Compact closed days, expire old snapshots, prune old metadata, remove orphan files."""
    from datetime import timedelta

    from .lake.maintain import maintain

    with _lake_errors("maintaining the events table", data_dir):
        table = _lake_table_if_any(data_dir)
        if table is None:
            _fail(f"no lakehouse in {data_dir}: `headlessly flush` (or a running server) makes and fills it")
        report = maintain(
            table,
            timedelta(days=retain_days),
            timedelta(hours=orphan_hours),
            progress=lambda t: click.echo(f"  {t}", err=True),
        )
    click.echo(
        f"compacted {len(report.days_compacted)} day(s), expired {report.snapshots_expired} snapshot(s), "
        f"removed {report.orphans_removed} orphan data file(s) and {report.metadata_removed} unreferenced metadata "
        f"file(s); data files {report.files_before} -> {report.files_after}"
    )


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    click.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
