"""``pyrecks``: start chains, run VMs, watch and control chains."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from typing import Any

import click

from pyrecks import __version__, watching
from pyrecks.api import ChainExists, Pyrecks, connect
from pyrecks.cli.common import SECONDS, PyrecksGroup, Seconds, fail, redis_option
from pyrecks.display import one_line
from pyrecks.logsetup import FORMATS as LOG_FORMATS
from pyrecks.logsetup import LEVELS as LOG_LEVELS
from pyrecks.logsetup import VM_LOGGER
from pyrecks.logsetup import configure as configure_logging
from pyrecks.vm.machine import ISOLATION_MODES
from pyrecks.vm.records import ChainInfo, ChainStatus


@click.group(cls=PyrecksGroup)
@click.version_option(__version__, prog_name="pyrecks")
def main() -> None:
    """Run chains of pure Python kernels stored in Redis.

    Every command takes --redis URL (or $REDIS_URL); without either, pyrecks uses an
    embedded Redis whose data lives in $PYRECKS_HOME (default ~/.pyrecks).
    """


def _px(redis_url: str | None) -> Pyrecks:
    return connect(redis_url)


def _finish(px: Pyrecks, chain_id: str, as_json: bool, info: ChainInfo) -> None:
    if as_json:
        click.echo(json.dumps(info.to_json(), indent=2))
    else:
        click.echo(watching.describe(info))
    sys.exit(0 if info.status is ChainStatus.DONE else 1)


@main.command()
@click.argument("call")
@click.option("--wait", is_flag=True, help="Wait for the chain; exit 0 if done, 1 if failed.")
@click.option("--follow", "-f", is_flag=True, help="Like --wait, printing every log entry.")
@click.option(
    "--local", is_flag=True, help="Run a VM in this process for the chain (implies --wait)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the final chain record as JSON.")
@click.option("--id", "chain_id", default=None, help="Chain id to use (idempotent start).")
@click.option("--timeout", type=SECONDS, default=None, help="Give up waiting after SECONDS.")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Threads of a --local VM.",
)
@redis_option
def run(
    call: str,
    wait: bool,
    follow: bool,
    local: bool,
    as_json: bool,
    chain_id: str | None,
    timeout: float | None,
    threads: int,
    redis_url: str | None,
) -> None:
    """Start a chain with a CALL like 'func0("hi")' or a kernel NAME like start.

    Prints the chain id at once and returns, unless --wait, --follow or --local.
    """
    px = _px(redis_url)
    try:
        # An explicit --id that names an existing chain starts nothing: showing the old
        # run as if it were this one would mislead (it may have run another call).
        cid = px.start(call, chain_id=chain_id, exist_ok=chain_id is None, local=local)
    except ChainExists as exc:
        fail(f"{exc}; see 'pyrecks status {exc.chain_id}', or choose another --id")
        return
    # A chain nobody will run must not look like a slow one: say so at once.
    nobody = None if local else watching.no_vm_warning(px, redis_url)
    if not (wait or follow or local):
        click.echo(json.dumps({"chain": cid}) if as_json else cid)
        if nobody:
            click.echo(f"warning: {nobody}", err=True)
        return
    if not as_json:
        click.echo(f"chain {cid} started", err=True)
    if nobody:
        click.echo(f"warning: {nobody}", err=True)
    on_entry = None if as_json else watching.EntryPrinter(cid, everything=follow)
    kinds = None if follow else watching.WAIT_KINDS
    interrupted = False
    try:
        if local:
            with px.local_vm(threads=threads, echo=False):
                try:
                    info = px.wait(cid, timeout=timeout, on_entry=on_entry, kinds=kinds)
                except KeyboardInterrupt:
                    # Let the local VM drain (its step finishes, the chain goes back to
                    # the queue) without a second Ctrl-C cutting that short.
                    interrupted = True
                    signal.signal(signal.SIGINT, signal.SIG_IGN)
                    click.echo("interrupted: stopping the local VM …", err=True)
        else:
            info = px.wait(cid, timeout=timeout, on_entry=on_entry, kinds=kinds)
    except TimeoutError as exc:
        hint = watching.no_vm_warning(px, redis_url) if not local else None
        fail(f"{exc}; {hint}" if hint else str(exc))
        return
    if interrupted:
        fail(watching.interrupted_message(px, cid), code=130)
        return
    _finish(px, cid, as_json, info)


@main.command()
@click.option("--threads", "-t", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--name", default=None, help="Stable VM name (default: host-pid-random).")
@click.option(
    "--quiet",
    is_flag=True,
    help="Do not echo kernel output to the console (and log warnings and errors only, "
    "unless --log-level says otherwise).",
)
@click.option(
    "--log-level",
    type=click.Choice(list(LOG_LEVELS), case_sensitive=False),
    default=None,
    envvar="PYRECKS_LOG_LEVEL",
    help="Least level logged (default info; warning with --quiet). Env PYRECKS_LOG_LEVEL.",
)
@click.option(
    "--log-format",
    type=click.Choice(list(LOG_FORMATS), case_sensitive=False),
    default=None,
    envvar="PYRECKS_LOG_FORMAT",
    help="text (default) or json: one JSON object per line (docs/observability.md). "
    "Env PYRECKS_LOG_FORMAT.",
)
@click.option(
    "--retention",
    type=click.IntRange(min=1),
    default=7 * 24 * 3600,
    show_default=True,
    help="Seconds finished chain records and logs are kept.",
)
@click.option(
    "--isolation",
    type=click.Choice(list(ISOLATION_MODES)),
    default=ISOLATION_MODES[0],
    show_default=True,
    help="jail: each kernel runs in its own confined process (no files, no network, no "
    "Redis); process: worker processes with time and memory limits but no jail; thread: "
    "inside the VM, for kernels you trust as much as the VM itself (see docs/isolation.md).",
)
@click.option(
    "--memory-limit",
    "memory_limit",
    type=click.IntRange(min=1),
    default=512,
    show_default=True,
    metavar="MB",
    help="With --isolation jail or process: memory a kernel may allocate in its process.",
)
@click.option(
    "--max-cells",
    "max_cells",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="With --isolation jail: at most this many cells (one kernel version each) at once.",
)
@click.option(
    "--lease",
    type=Seconds(min=0.1),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds without a heartbeat after which other VMs take over this VM's chains.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    metavar="PORT",
    help="Serve Prometheus metrics on this port (0: any free port; docs/observability.md).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics are served on.",
)
@click.option(
    "--otel",
    is_flag=True,
    help="OpenTelemetry traces, configured by the OTEL_* environment (pyrecks[otel]); also "
    "on without this flag when OTEL_TRACES_EXPORTER or OTEL_SERVICE_NAME is set.",
)
@redis_option
def vm(
    threads: int,
    name: str | None,
    quiet: bool,
    log_level: str | None,
    log_format: str | None,
    retention: int,
    isolation: str,
    memory_limit: int,
    max_cells: int,
    lease: float,
    metrics_port: int | None,
    metrics_host: str,
    otel: bool,
    redis_url: str | None,
) -> None:
    """Run a VM until Ctrl-C (which drains: running chains go back to the queue)."""
    configure_logging(log_level, log_format, quiet=quiet)
    px = _px(redis_url)
    config: dict[str, Any] = {
        "threads": threads,
        "echo": not quiet,
        "retention": retention,
        "lease": lease,
        "isolation": isolation,
        "memory_limit_mb": memory_limit,
        "max_cells": max_cells,
    }
    if name:
        config["name"] = name
    machine = px.vm(**config)
    _observe(machine, isolation, metrics_host, metrics_port, otel)
    logging.getLogger(VM_LOGGER).warning(
        "pyrecks vm %s: %d threads, %s isolation; Ctrl-C to stop",
        machine.name,
        threads,
        isolation,
        extra={"vm": machine.name},
    )
    # SIGTERM (systemd, docker stop, kill) drains like Ctrl-C instead of dropping work.
    # SIGINT too, set explicitly: a VM started with SIGINT ignored (nohup, '&' in a script,
    # some CI wrappers) inherits SIG_IGN, and Python then installs no Ctrl-C handler.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    machine.run_forever()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _observe(machine: Any, isolation: str, host: str, port: int | None, otel: bool) -> None:
    """--metrics-port / --otel: subscribe metrics and traces to the VM (pyrecks/observe)."""
    from pyrecks.errors import PyrecksError
    from pyrecks.observe.setup import for_vm

    try:
        observers = for_vm(
            machine.name,
            isolation,
            metrics_host=host,
            metrics_port=port,
            otel=otel,
            say=lambda line: click.echo(line, err=True),
        )
    except PyrecksError as exc:
        machine.executor.close()
        fail(str(exc))
        return
    machine.observe(*observers)


@main.command()
@click.argument("chain_id")
@click.option("--json", "as_json", is_flag=True)
@redis_option
def status(chain_id: str, as_json: bool, redis_url: str | None) -> None:
    """Show a chain's record: status, the step running now, timings, result or error."""
    px = _px(redis_url)
    info = px.status(chain_id)
    running = px.running_step(info)
    if as_json:
        click.echo(json.dumps(watching.status_json(info, running), indent=2))
    else:
        click.echo(watching.describe(info, running))


@main.command()
@click.argument("chain_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the chain ends.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="One JSON object per entry: chain, id, kind, step, kernel, text, ts, attempt.",
)
@click.option(
    "--branches/--no-branches",
    default=True,
    show_default=True,
    help="Also the logs of the chain's fan-out branches (labelled with their ids).",
)
@redis_option
def logs(chain_id: str, follow: bool, as_json: bool, branches: bool, redis_url: str | None) -> None:
    """Print a chain's log: steps, kernel output, errors (and its branches' logs)."""
    px = _px(redis_url)
    px.status(chain_id)  # a clear error for unknown ids
    for entry in px.logs(chain_id, follow=follow, branches=branches):
        if as_json:
            click.echo(watching.entry_json(entry, chain_id))
        else:
            click.echo(watching.format_entry(entry, chain_id))


@main.command("ls")
@click.option("--status", "status_filter", type=click.Choice([s.value for s in ChainStatus]))
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@redis_option
def ls_cmd(status_filter: str | None, limit: int, as_json: bool, redis_url: str | None) -> None:
    """List recent chains, newest first."""
    infos = _px(redis_url).chains(status=status_filter, limit=limit)
    if as_json:
        click.echo(json.dumps([i.to_json() for i in infos], indent=2))
        return
    if not infos:
        click.echo("no chains")
        return
    click.echo(f"{'CHAIN':<18} {'STATUS':<10} {'STEP':>5}  {'AGE':>8}  NEXT / RESULT / ERROR")
    now = time.time()
    for i in infos:
        detail = i.error or (i.result if i.status is ChainStatus.DONE else i.call) or ""
        age = f"{now - i.created:.0f}s" if i.created else "?"
        row = f"{i.id:<18} {i.status.value:<10} {i.step:>5}  {age:>8}  {detail[:60]}"
        click.echo(one_line(row))  # ids, calls, results and errors come from Redis


@main.command()
@click.argument("chain_id")
@redis_option
def cancel(chain_id: str, redis_url: str | None) -> None:
    """Cancel a queued, running or waiting chain (its current step finishes, then it stops)."""
    px = _px(redis_url)
    if px.cancel(chain_id):
        click.echo(f"chain {chain_id} cancelled")
    else:
        fail(f"chain {chain_id} is already {px.status(chain_id).status.value}; nothing to cancel")


@main.command()
@click.argument("chain_id")
@redis_option
def retry(chain_id: str, redis_url: str | None) -> None:
    """Resume a failed chain from the step that failed (e.g. after fixing the kernel)."""
    px = _px(redis_url)
    step = px.status(chain_id).step  # read first: once queued, a VM may move it on at once
    if px.retry(chain_id):
        click.echo(f"chain {chain_id} queued again at step {step}")
    else:
        fail(
            f"chain {chain_id} is {px.status(chain_id).status.value}, not failed; nothing to retry"
        )


@main.command()
@click.option("--json", "as_json", is_flag=True)
@redis_option
def vms(as_json: bool, redis_url: str | None) -> None:
    """List VMs: alive or dead, threads, chains running now, last heartbeat."""
    infos = _px(redis_url).vms()
    if as_json:
        click.echo(json.dumps([v.to_json() for v in infos], indent=2))
        return
    if not infos:
        click.echo("no VMs have run against this Redis")
        return
    now = time.time()
    click.echo(
        f"{'VM':<36} {'STATE':<8} {'LOAD':>7}  {'ISOLATION':<9} {'BEAT':>7}  "
        f"{'POLICY':<12}  HOST:PID"
    )
    for v in infos:
        load = f"{v.active}/{v.threads}"
        click.echo(
            one_line(
                f"{v.name:<36} {v.state:<8} {load:>7}  {v.isolation:<9} "
                f"{now - v.beat:>6.1f}s  {v.policy or '?':<12}  {v.host}:{v.pid}"
            )
        )


@main.command()
@click.argument("role", type=click.Choice(["vm", "client"]))
@click.option("--user", "username", default=None, help="ACL user name (default pyrecks-ROLE).")
@click.option("--password", required=True, help="The new user's password.")
@click.option(
    "--keys",
    "key_patterns",
    default=None,
    help="Key patterns instead of the role's default (e.g. '~app:* ~pyrecks:*').",
)
def acl(role: str, username: str | None, password: str, key_patterns: str | None) -> None:
    """Print a least-privilege ACL SETUSER command for a VM or a client (docs/operations.md)."""
    from pyrecks.acl import setuser

    click.echo(setuser(role, username or f"pyrecks-{role}", password, key_patterns))


def _register() -> None:
    # Command families in modules of their own; importing them registers them on ``main``.
    from pyrecks.cli import embedded_cmds  # noqa: F401  (demo, embedded status/stop/cli, redis-cli)
    from pyrecks.cli.tree_cmd import tree
    from pyrecks.ui.cli import ui

    main.add_command(tree)
    main.add_command(ui)


_register()
