"""What each ``trio-jobs`` command does, given its parsed arguments (the parser is in ``_main``)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs

from .._client import JobClient
from .._exceptions import StorageError
from .._flow import held_back_reason
from .._records import Job, JobStatus
from ..storage._base import CancelOutcome, flow_control, held_back_jobs
from ..storage._browse import JobBrowser
from ._errors import CliError, UsageError
from ._follow import follow_jobs
from ._format import (
    held_back_text,
    job_details,
    jobs_table,
    jobs_to_json,
    limits_table,
    one_line,
    schedules_table,
    stats_table,
    to_json,
    workers_table,
)
from ._store import StoreSpec, open_storage, store_spec, unhandled_text, unhandled_types
from ._worker import run_worker


@asynccontextmanager
async def _client(
    args: argparse.Namespace, *, must_exist: bool, read_only: bool = False
) -> AsyncIterator[JobClient]:
    spec = args.store
    storage = spec.create(max_connections=2, read_only=read_only)
    await open_storage(storage, spec, must_exist=must_exist)
    async with JobClient(storage) as client:
        yield client


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print ``data`` as JSON with ``--json``, else ``text``."""
    if args.json:
        print(json.dumps(to_json(data), indent=2, ensure_ascii=False))
    else:
        print(text)


def _note(args: argparse.Namespace, text: str) -> None:
    """A remark beside the output: in the table (stdout), or on stderr beside JSON."""
    if args.json:
        print(f"trio-jobs: {text}", file=sys.stderr)
    else:
        print(text)


#: The shortest id prefix ``show``, ``cancel`` and ``retry`` look up (as git does).
MIN_PREFIX = 4


async def _find(client: JobClient, job_id: str) -> Job[Any]:
    """The job with this id, or the one job whose id starts with it."""
    job = await client.get_job(job_id)
    if job is not None:
        return job
    find = getattr(client.storage, "job_ids_starting_with", None)
    if find is not None and len(job_id) >= MIN_PREFIX:
        ids: list[str] = await find(job_id, limit=6)
        if len(ids) > 1:
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            raise CliError(
                f"id prefix {job_id!r} is ambiguous: it starts {shown}; give more characters"
            )
        if ids:
            job = await client.get_job(ids[0])
            if job is not None:
                return job
    short = (
        f" (a prefix needs at least {MIN_PREFIX} characters)" if len(job_id) < MIN_PREFIX else ""
    )
    raise CliError(f"no job with id {job_id!r}{short}")


def _parse_json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"submit: invalid JSON {what}: {exc}") from None


def _stdin_payloads(text: str) -> list[Any]:
    """One JSON payload per non-empty line; a single multi-line document is one payload."""
    lines = [line for line in text.splitlines() if line.strip()]
    try:
        return [json.loads(line) for line in lines]
    except json.JSONDecodeError as exc:
        try:
            return [json.loads(text)]
        except json.JSONDecodeError:
            raise UsageError(f"submit: invalid JSON payload on stdin: {exc}") from None


async def cmd_submit(args: argparse.Namespace) -> int:
    """``submit TYPE [JSON]``: enqueue a job; print its id.

    ``submit TYPE -`` reads one JSON payload per line from stdin and enqueues them
    all with one ``submit_many`` (one transaction); it prints one id per line.
    """
    metadata = None
    if args.metadata is not None:
        metadata = _parse_json(args.metadata, "--metadata")
        if not isinstance(metadata, dict):
            raise UsageError('submit: --metadata must be a JSON object, e.g. \'{"source": "cli"}\'')
    if args.tenant is not None and not args.tenant.strip():
        raise UsageError("submit: --tenant must not be empty")
    retry = None if args.max_attempts is None else {"max_attempts": args.max_attempts}
    options: dict[str, Any] = {
        "priority": args.priority,
        "retry": retry,
        "timeout": args.timeout,
        "delay": args.delay,
        "metadata": metadata,
        "tenant_id": args.tenant,
        "run_at": args.run_at,
        "unique_key": args.unique_key,
    }
    if args.payload == "-":
        payloads = _stdin_payloads(sys.stdin.read())
        async with _client(args, must_exist=True) as client:
            try:
                handles = await client.submit_many(args.type, payloads, **options)
            except StorageError:
                raise
            except (TypeError, ValueError) as exc:
                raise UsageError(f"submit: {exc}") from None
        ids = [handle.id for handle in handles]
        _emit(args, ids, "\n".join(ids) if ids else "no payloads on stdin: nothing submitted")
        return 0
    payload = None if args.payload is None else _parse_json(args.payload, "payload")
    async with _client(args, must_exist=True) as client:
        try:
            handle = await client.submit(args.type, payload, **options)
        except StorageError:
            raise
        except (TypeError, ValueError) as exc:
            raise UsageError(f"submit: {exc}") from None
        job = await client.get_job(handle.id)
    _emit(args, job, handle.id)
    return 0


async def cmd_schedules(args: argparse.Namespace) -> int:
    """``schedules``: every schedule runners stored, with its last and next run."""
    async with _client(args, must_exist=True, read_only=True) as client:
        schedules = await client.schedules()
    _emit(args, schedules, schedules_table(schedules))
    return 0


async def cmd_list(args: argparse.Namespace) -> int:
    """``list``: the newest jobs, filtered by status and type; ``--follow`` watches them."""
    spec: StoreSpec = args.store
    async with _client(args, must_exist=True, read_only=True) as client:
        found = await client.storage.list_jobs(
            status=args.status, job_type=args.type, limit=args.limit + 1
        )
        jobs, more = found[: args.limit], len(found) > args.limit
        held = await held_back_jobs(client.storage, jobs)
        unhandled = await unhandled_types(client.storage, await client.workers())
        if args.json and not args.follow:
            _emit(args, jobs_to_json(jobs, held), "")
        elif not args.json:
            print(f"{spec.describe()}, newest first:")
            print(jobs_table(jobs, held=held) if jobs else "no jobs")
        if more:
            _note(args, f"showing the newest {args.limit} jobs; more match (raise --limit)")
        if unhandled:
            _note(args, f"warning: {unhandled_text(unhandled)}")
        if args.follow:
            await follow_jobs(client, args, jobs)
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    """``show ID``: every field of one job, with its last error's traceback."""
    async with _client(args, must_exist=True, read_only=True) as client:
        job = await _find(client, args.id)
        held = await client.held_back(job)
    _emit(args, {**to_json(job), "held_back": held}, job_details(job, held))
    return 0


async def cmd_stats(args: argparse.Namespace) -> int:
    """``stats``: counts by status, the held-back types, the types no live worker handles."""
    spec: StoreSpec = args.store
    async with _client(args, must_exist=True, read_only=True) as client:
        stats = await client.stats()
        held = await client.held_back_types()
        pending = await _pending_by_type(client) if held and not args.json else None
        unhandled = await unhandled_types(client.storage, await client.workers())
    if args.json:
        data = {
            **to_json(stats),
            **spec.to_json(),
            "held_back": to_json(held),
            "unhandled": unhandled,
        }
        print(json.dumps(data, indent=2, ensure_ascii=False))
        if unhandled:
            _note(args, f"warning: {unhandled_text(unhandled)}")
        return 0
    text = f"{spec.describe()}:\n\n{stats_table(stats)}"
    if held:
        text += f"\n\n{held_back_text(held, pending)}"
    if unhandled:
        text += f"\n\nwarning: {unhandled_text(unhandled)}"
    print(text)
    return 0


async def _pending_by_type(client: JobClient) -> dict[str, int] | None:
    """PENDING jobs by type, when the store can summarize its queue (else None)."""
    if not isinstance(client.storage, JobBrowser):
        return None
    summary = await client.storage.summarize(minutes=1)
    return {
        job_type: count
        for (status, job_type), count in summary.counts.items()
        if status is JobStatus.PENDING
    }


async def cmd_workers(args: argparse.Namespace) -> int:
    """``workers``: the live runners on the store, from its workers table."""
    async with _client(args, must_exist=True, read_only=True) as client:
        workers = await client.workers()
    _emit(args, workers, workers_table(workers))
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    """``cancel ID``: cancel a waiting job, or ask a running job's worker to stop it."""
    async with _client(args, must_exist=True) as client:
        job_id = (await _find(client, args.id)).id
        outcome = await client.storage.request_cancel(job_id)
        job = await _find(client, job_id)
    if outcome is CancelOutcome.NOTHING:
        raise CliError(f"job {job_id} is already {job.status.value}: nothing to cancel")
    if outcome is CancelOutcome.CANCELLED:
        text = f"cancelled job {job_id}"
    else:
        text = f"job {job_id} is running: its worker was asked to cancel it"
    _emit(args, {"id": job_id, "outcome": outcome.value, "status": job.status}, text)
    return 0


async def cmd_retry(args: argparse.Namespace) -> int:
    """``retry ID``: re-queue a failed, timed-out or cancelled job with fresh attempts."""
    async with _client(args, must_exist=True) as client:
        job_id = (await _find(client, args.id)).id
        try:
            requeued = await client.storage.requeue(job_id)
        except StorageError:
            raise
        except ValueError as exc:  # an active job holds its unique_key
            raise CliError(str(exc)) from None
        job = await _find(client, job_id)
    if not requeued:
        raise CliError(
            f"job {job_id} is {job.status.value}: only failed, timeout and cancelled"
            " jobs can be retried"
        )
    _emit(args, job, f"requeued job {job_id} ({job.type}) with fresh attempts")
    return 0


async def cmd_purge(args: argparse.Namespace) -> int:
    """``purge --older-than DURATION``: delete final jobs that finished before then."""
    async with _client(args, must_exist=True) as client:
        count = await client.storage.purge(args.older_than)
    _emit(args, {"purged": count}, f"purged {count} job{'' if count == 1 else 's'}")
    return 0


async def cmd_migrate(args: argparse.Namespace) -> int:
    """``migrate``: create or update the store's tables; print the schema version."""
    spec: StoreSpec = args.store
    storage = spec.create(max_connections=2)
    from ..storage.postgres import PostgresStorage

    if isinstance(storage, PostgresStorage):
        try:
            version = await storage.migrate()
        except Exception as exc:
            raise CliError(f"cannot migrate {spec.describe()}: {one_line(str(exc))}") from None
    else:
        from ..storage.sqlite._store import SCHEMA_VERSION

        await open_storage(storage, spec)
        await storage.close()
        version = SCHEMA_VERSION
    data = {"store": spec.kind, "schema_version": version}
    if spec.kind == "sqlite":
        data["path"] = spec.location
    else:
        data["schema"] = spec.schema
    _emit(args, data, f"{spec.describe()} is at schema version {version}")
    return 0


async def cmd_worker(args: argparse.Namespace) -> int:
    """``worker APP``: run jobs until a signal stops it."""
    return await run_worker(args)


async def cmd_demo(args: argparse.Namespace) -> int:
    """``demo``: a live tour on a fresh temporary SQLite file (or ``--memory``)."""
    from ._demo import run_demo

    if args.memory and (args.db is not None or args.dsn is not None):
        raise UsageError("demo: give --memory, --db or --dsn, not several")
    if args.memory:
        spec = StoreSpec("memory")
    elif args.db is not None or args.dsn is not None:
        spec = store_spec(args, {})
    else:
        with tempfile.TemporaryDirectory(prefix="trio-jobs-demo-") as folder:
            spec = StoreSpec("sqlite", os.path.join(folder, "demo.db"))
            return await _demo_on(spec, run_demo)
    return await _demo_on(spec, run_demo)


async def _demo_on(spec: StoreSpec, run_demo: Callable[..., Awaitable[None]]) -> int:
    storage = spec.create()
    await open_storage(storage, spec)
    await run_demo(storage, where=spec.describe())
    return 0


__all__ = [
    "cmd_cancel",
    "cmd_demo",
    "cmd_list",
    "cmd_migrate",
    "cmd_purge",
    "cmd_retry",
    "cmd_show",
    "cmd_stats",
    "cmd_workers",
    "cmd_submit",
    "cmd_worker",
]


# -- flow control -------------------------------------------------------------------------


async def cmd_pause(args: argparse.Namespace) -> int:
    """``pause TYPE``: no worker claims jobs of TYPE until it is resumed."""
    async with _client(args, must_exist=True) as client:
        await client.pause(args.type)
        limits = await client.get_limits(args.type)
    _emit(args, limits, f"paused {args.type}: running jobs finish, no new ones start")
    return 0


async def cmd_resume(args: argparse.Namespace) -> int:
    """``resume TYPE``: workers claim jobs of TYPE again."""
    async with _client(args, must_exist=True) as client:
        await client.resume(args.type)
        limits = await client.get_limits(args.type)
    _emit(args, limits, f"resumed {args.type}")
    return 0


async def cmd_limits(args: argparse.Namespace) -> int:
    """``limits [TYPE] [options]``: show the flow settings, or change those given."""
    changes = {
        name: getattr(args, name)
        for name in ("max_running", "max_running_per_tenant", "rate", "fair_tenants")
        if getattr(args, name) is not None
    }
    if changes and args.type is None:
        raise CliError("give the TYPE whose limits to change")
    async with _client(args, must_exist=True) as client:
        if changes:
            old = await client.get_limits(args.type)
            await client.set_limits(
                args.type,
                max_running=changes.get("max_running", old.max_running),
                max_running_per_tenant=changes.get(
                    "max_running_per_tenant", old.max_running_per_tenant
                ),
                rate=changes.get("rate", old.rate),
                fair_tenants=changes.get("fair_tenants", old.fair_tenants),
            )
        store = flow_control(client.storage)
        if args.type is not None:
            shown = [await store.get_limits(args.type)]
        else:
            shown = await store.all_limits()
        rows = []
        for limits in shown:
            running, recent, _ = await store.flow_usage(limits.job_type)
            reason = held_back_reason(limits, running, recent, None)
            rows.append((limits, running, recent, reason))
    data = [
        {
            **attrs.asdict(limits),
            "running": running,
            "starts_in_window": recent,
            "held_back_by": reason,
        }
        for limits, running, recent, reason in rows
    ]
    _emit(args, data, limits_table(rows))
    return 0


async def cmd_tenant_weight(args: argparse.Namespace) -> int:
    """``tenant-weight TENANT WEIGHT``: the tenant's share in fair turns."""
    async with _client(args, must_exist=True) as client:
        await client.set_tenant_weight(args.tenant, args.weight)
    _emit(
        args,
        {"tenant_id": args.tenant, "weight": args.weight},
        f"tenant {args.tenant} has weight {args.weight:g}",
    )
    return 0
