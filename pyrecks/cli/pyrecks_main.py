"""``pyrecks``: start chains, run VMs, watch and control chains."""

from __future__ import annotations

import json
import signal
import sys
import time
from typing import Any

import click

from pyrecks import __version__
from pyrecks.api import ChainExists, Pyrecks, connect
from pyrecks.cli.common import PyrecksGroup, fail, redis_option
from pyrecks.vm.machine import ISOLATION_MODES
from pyrecks.vm.records import ChainInfo, ChainStatus, LogEntry


@click.group(cls=PyrecksGroup)
@click.version_option(__version__, prog_name="pyrecks")
def main() -> None:
    """Run chains of pure Python kernels stored in Redis.

    Every command takes --redis URL (or $REDIS_URL); without either, pyrecks uses an
    embedded Redis whose data lives in $PYRECKS_HOME (default ~/.pyrecks).
    """


def _px(redis_url: str | None) -> Pyrecks:
    return connect(redis_url)


def _print_entry(entry: LogEntry) -> None:
    if entry.kind == "out":
        click.echo(f"  [{entry.kernel}] {entry.text}")
    elif entry.kind == "step":
        click.echo(click.style(f"step {entry.step}: {entry.kernel} {entry.text}", dim=True))
    elif entry.kind == "error":
        click.echo(
            click.style(f"step {entry.step}: {entry.kernel} failed: {entry.text}", fg="red"),
            err=True,
        )
    else:
        click.echo(click.style(f"step {entry.step}: {entry.kind}: {entry.text}", dim=True))


def _print_output(entry: LogEntry) -> None:
    """--wait: what the kernels printed, retries and errors; --follow shows every entry."""
    if entry.kind in ("out", "error", "retry"):
        _print_entry(entry)


def _describe(info: ChainInfo) -> str:
    lines = [
        f"chain    {info.id}",
        f"status   {info.status.value}",
        f"step     {info.step}",
    ]
    if info.call:
        lines.append(f"next     {info.call}")
    if info.kernel:
        lines.append(f"kernel   {info.kernel}")
    if info.owner:
        lines.append(f"owner    {info.owner}")
    if info.elapsed is not None:
        lines.append(f"elapsed  {info.elapsed:.3f}s")
    if info.parent:
        lines.append(f"parent   {info.parent}")
    if info.status is ChainStatus.DONE and info.result:
        lines.append(f"result   {info.result}")
    if info.error:
        lines.append(f"error    [{info.error_kind}] {info.error}")
    if info.traceback:
        lines.append(info.traceback.rstrip())
    return "\n".join(lines)


def _finish(px: Pyrecks, chain_id: str, as_json: bool, info: ChainInfo) -> None:
    if as_json:
        click.echo(json.dumps(info.to_json(), indent=2))
    else:
        click.echo(_describe(info))
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
@click.option("--timeout", type=float, default=None, help="Give up waiting after SECONDS.")
@click.option("--threads", type=int, default=4, show_default=True, help="Threads of a --local VM.")
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
    if not (wait or follow or local):
        click.echo(json.dumps({"chain": cid}) if as_json else cid)
        return
    if not as_json:
        click.echo(f"chain {cid} started", err=True)
    on_entry = None if as_json else (_print_entry if follow else _print_output)
    try:
        if local:
            with px.local_vm(threads=threads, echo=False):
                info = px.wait(cid, timeout=timeout, on_entry=on_entry)
        else:
            info = px.wait(cid, timeout=timeout, on_entry=on_entry)
    except TimeoutError as exc:
        fail(str(exc))
        return
    _finish(px, cid, as_json, info)


@main.command()
@click.option("--threads", "-t", type=int, default=8, show_default=True)
@click.option("--name", default=None, help="Stable VM name (default: host-pid-random).")
@click.option("--quiet", is_flag=True, help="Do not echo kernel output to the console.")
@click.option(
    "--retention",
    type=int,
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
    type=click.FloatRange(min=0.1),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Seconds without a heartbeat after which other VMs take over this VM's chains.",
)
@redis_option
def vm(
    threads: int,
    name: str | None,
    quiet: bool,
    retention: int,
    isolation: str,
    memory_limit: int,
    max_cells: int,
    lease: float,
    redis_url: str | None,
) -> None:
    """Run a VM until Ctrl-C (which drains: running chains go back to the queue)."""
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
    click.echo(
        f"pyrecks vm {machine.name}: {threads} threads, {isolation} isolation; Ctrl-C to stop",
        err=True,
    )
    # SIGTERM (systemd, docker stop, kill) drains like Ctrl-C instead of dropping work.
    # SIGINT too, set explicitly: a VM started with SIGINT ignored (nohup, '&' in a script,
    # some CI wrappers) inherits SIG_IGN, and Python then installs no Ctrl-C handler.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    machine.run_forever()


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


@main.command()
@click.argument("chain_id")
@click.option("--json", "as_json", is_flag=True)
@redis_option
def status(chain_id: str, as_json: bool, redis_url: str | None) -> None:
    """Show a chain's record: status, step, next call, timings, result or error."""
    info = _px(redis_url).status(chain_id)
    click.echo(json.dumps(info.to_json(), indent=2) if as_json else _describe(info))


@main.command()
@click.argument("chain_id")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the chain ends.")
@redis_option
def logs(chain_id: str, follow: bool, redis_url: str | None) -> None:
    """Print a chain's log: steps, kernel output, errors."""
    px = _px(redis_url)
    px.status(chain_id)  # a clear error for unknown ids
    for entry in px.logs(chain_id, follow=follow):
        click.echo(entry.format())


@main.command("ls")
@click.option("--status", "status_filter", type=click.Choice([s.value for s in ChainStatus]))
@click.option("--limit", type=int, default=20, show_default=True)
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
        click.echo(f"{i.id:<18} {i.status.value:<10} {i.step:>5}  {age:>8}  {detail[:60]}")


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
    if px.retry(chain_id):
        click.echo(f"chain {chain_id} queued again at step {px.status(chain_id).step}")
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
            f"{v.name:<36} {v.state:<8} {load:>7}  {v.isolation:<9} "
            f"{now - v.beat:>6.1f}s  {v.policy or '?':<12}  {v.host}:{v.pid}"
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
