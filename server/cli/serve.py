"""`headlessly serve`: the MCP server over stdio, streamable HTTP or SSE, with its background flush."""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..config import (
    CALLS_PER_TENANT,
    ENV_ACTOR,
    ENV_DURABILITY,
    ENV_TENANT,
    SESSION_IDLE_SECONDS,
    SESSIONS_PER_TOKEN,
    Config,
)
from .common import data_dir_option, fail, finite, log, main, open_store, schemas_option


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
              callback=finite,
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
    "--calls-per-tenant",
    type=click.IntRange(min=1, max=40),
    default=CALLS_PER_TENANT,
    show_default=True,
    help="http/sse: the most tool calls of one tenant that run at once (the others wait their turn), so that no "
    "tenant can take every worker thread (40) from the others.",
)
@click.option(
    "--session-idle-timeout",
    type=click.FloatRange(min=1, max=86400),
    default=SESSION_IDLE_SECONDS,
    show_default=True,
    callback=finite,
    help="http: seconds a session may go without a request in flight before it is closed.",
)
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
def serve(transport: str, host: str, port: int, no_auth: bool, data_dir: Path, tenant: str, actor: str | None,
          schema_dirs: tuple[Path, ...], hook_modules: tuple[str, ...], durability: str, flush_interval: float,
          no_flush: bool, sessions_per_token: int, calls_per_tenant: int, session_idle_timeout: float,
          log_level: str) -> None:  # fmt: skip
    """Run the MCP server (logs go to stderr)."""
    from ..logsetup import log_to_stderr

    log_to_stderr(log_level)
    from ..errors import HeadlesslyError
    from ..store.operations import check_actor
    from ..store.tenants import check_tenant

    given = click.get_current_context().get_parameter_source
    unused, applies_to = {
        "stdio": (("host", "port", "no_auth", "sessions_per_token", "calls_per_tenant", "session_idle_timeout"),
                  "--transport http or sse"),
        "sse": (("sessions_per_token", "session_idle_timeout"), "--transport http"),
    }.get(transport, ((), ""))  # fmt: skip
    if flags := [
        f"--{n.replace('_', '-')}" for n in unused if given(n) not in (click.core.ParameterSource.DEFAULT, None)
    ]:
        log.warning(
            "%s ignored: %s to %s", ", ".join(flags), "they apply" if len(flags) > 1 else "it applies", applies_to
        )
    if transport == "stdio" or no_auth:
        try:
            check_tenant(tenant)
            if actor is not None:
                check_actor(actor)
        except HeadlesslyError as exc:
            fail(exc.message)
    else:  # with tokens each token names its tenant and actor
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
        fail("--flush-interval and --no-flush contradict each other: give one of them")
    if transport != "stdio":
        _check_host(host)
    if transport != "stdio" and no_auth and not _is_loopback(host):
        fail(
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
    store = open_store(config, serving=True)  # bad schemas or hooks are refused before anything is made
    _check_writable(data_dir)
    _warn_if_exposed(data_dir)
    _stop_on_signals(stdio=transport == "stdio")
    background = None
    if not no_flush:
        from ..lake.background import BackgroundFlush

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
            _serve_http(
                store, config, transport, host, port, no_auth,
                per_token=sessions_per_token, idle_seconds=session_idle_timeout, calls_per_tenant=calls_per_tenant,
            )  # fmt: skip
    finally:
        _ignore_signals()  # the shutdown is under way: let its final flush finish
        log.info("shutting down: %sexit (further signals are ignored)", "a last flush, then " if background else "")
        shut_down()


def _check_writable(data_dir: Path) -> None:
    """Refuse to start on a data dir no write could reach, rather than fail every write after a handshake."""
    import tempfile

    from ..config import private_dir

    try:
        private_dir(data_dir)
        with tempfile.TemporaryFile(dir=data_dir):
            pass
    except OSError as exc:
        fail(f"cannot write in the data dir {data_dir}: {exc.strerror or exc}", 1)


def _warn_if_exposed(data_dir: Path) -> None:
    """A data dir (or what it holds) that other local users may read, e.g. made by an older version."""
    from ..auth.tokens import tokens_path

    exposed = [
        f"{path} ({mode:o})"
        for path in (data_dir, data_dir / "tenants", data_dir / "lakehouse", tokens_path(data_dir))
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


_HOST_NAME = re.compile(
    r"(?!.{254})([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


def _check_host(host: str) -> None:
    """Refuse a --host that is neither an IP address nor a host name, before it fails to bind or to make
    the server's URL."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if not _HOST_NAME.fullmatch(host) or host.replace(".", "").isdigit():
            fail(f"--host {host!r} is not an IP address or a host name (e.g. 127.0.0.1, ::1, localhost, 0.0.0.0)")
        return
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        fail(f"--host {host!r}: an IPv6 address with a zone (%{address.scope_id}) is not supported; give one without")


def _shown(host: str) -> str:
    """The host as a URL spells it: an IPv6 address in brackets."""
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback  # (--host takes off an IPv6 address's brackets)
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

    from ..auth.identity import LocalIdentity
    from ..tools.app import build_server

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
    store: Any,
    config: Config,
    transport: str,
    host: str,
    port: int,
    no_auth: bool,
    *,
    per_token: int,
    idle_seconds: float,
    calls_per_tenant: int,
) -> None:
    """`per_token`: the most sessions one token may hold; `idle_seconds`: how long an idle one is kept;
    `calls_per_tenant`: the most calls of one tenant that run at once."""
    from ..auth.challenge import explain_refusals
    from ..auth.identity import LocalIdentity
    from ..auth.sessions import limit_sessions_per_token
    from ..auth.tokens import TokenStore
    from ..listen import listen
    from ..tools.app import build_server

    tokens = None if no_auth else TokenStore(config.data_dir)
    shown_host = _shown(host)
    base_url = f"http://{shown_host}:{port}"
    identity = LocalIdentity(config.tenant, config.actor) if no_auth else None
    server = build_server(store, identity, tokens, base_url, calls_per_tenant=calls_per_tenant)
    security = _host_checks(shown_host, no_auth)
    if transport == "http":
        app = server.streamable_http_app(host=host, transport_security=security, session_idle_timeout=idle_seconds)
        if tokens is not None:
            limit_sessions_per_token(app, server.session_manager, per_token, idle_seconds)
    else:
        app = server.sse_app(host=host, transport_security=security)
    if tokens is not None:
        explain_refusals(app)
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
        listen(app, host, port, announce, in_flight=lambda: server.calls_in_flight)
    finally:
        if tokens is not None:
            tokens.close()
