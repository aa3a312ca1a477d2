"""JobBrowser on every store: keyset pages with filters, the summary, purge by filter."""

from __future__ import annotations

from typing import Any

import pytest

from trio_jobs import ErrorInfo, Job, JobStatus
from trio_jobs.storage import JobBrowser
from trio_jobs.storage._browse import minute_series

WORKER = "w1"


async def _finish(store: Any, job_id: str, status: JobStatus) -> None:
    """Claim the ready jobs, end ``job_id`` with ``status``, give the others back."""
    error = None if status is JobStatus.COMPLETED else ErrorInfo("boom", "ValueError")
    for claimed in await store.claim(WORKER, 100):
        mine = claimed.id == job_id
        assert await store.settle(
            claimed.id,
            worker_id=WORKER,
            attempt=claimed.attempts,
            status=status if mine else JobStatus.PENDING,
            error=error if mine else None,
        )


async def _fill(store: Any, n: int, **fields: Any) -> list[str]:
    ids = []
    for i in range(n):
        job = Job(id=f"{fields.get('type', 'a')}-{i:03d}", **{"type": "a", **fields})
        await store.save(job)
        ids.append(job.id)
    return ids


async def test_every_store_is_a_job_browser(store: Any) -> None:
    assert isinstance(store, JobBrowser)


async def test_pages_walk_every_job_newest_first_without_repeats(store: Any) -> None:
    ids = await _fill(store, 23)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await store.browse_jobs(limit=5, cursor=cursor)
        pages += 1
        seen += [job.id for job in page.jobs]
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == list(reversed(ids))
    assert pages == 5


async def test_pages_merge_every_status_newest_first(store: Any) -> None:
    # Jobs of every status interleave by age: a page over all statuses (and over
    # one type) is in submission order, newest first, across page boundaries.
    ids = await _fill(store, 6, type="email") + await _fill(store, 6, type="sms")
    ends = {
        "email-001": JobStatus.COMPLETED,
        "sms-002": JobStatus.FAILED,
        "email-004": JobStatus.CANCELLED,
        "sms-005": JobStatus.COMPLETED,
    }
    for job_id, status in ends.items():
        await _finish(store, job_id, status)

    async def walk(**filters: Any) -> list[str]:
        seen: list[str] = []
        cursor = None
        while True:
            page = await store.browse_jobs(limit=3, cursor=cursor, **filters)
            seen += [job.id for job in page.jobs]
            if page.next_cursor is None:
                return seen
            cursor = page.next_cursor

    assert await walk() == list(reversed(ids))
    assert await walk(job_type="sms") == [i for i in reversed(ids) if i.startswith("sms")]
    assert [job.id for job in await store.list_jobs(limit=5)] == list(reversed(ids))[:5]
    assert [job.id for job in await store.list_jobs(job_type="email")] == [
        i for i in reversed(ids) if i.startswith("email")
    ]


async def test_running_jobs_are_found_by_every_read(store: Any) -> None:
    # PostgreSQL keeps running jobs out of its status indexes (migration 7): each
    # read that can meet them must still find them, on every store.
    ids = await _fill(store, 3, type="email") + await _fill(store, 2, type="solo")
    keep = {"email-001", "solo-000", "solo-001"}
    for job in await store.claim(WORKER, 100):
        if job.id not in keep:
            assert await store.settle(
                job.id, worker_id=WORKER, attempt=job.attempts, status=JobStatus.PENDING
            )
    running = [job_id for job_id in reversed(ids) if job_id in keep]  # newest first

    async def page(**filters: Any) -> list[str]:
        return [job.id for job in (await store.browse_jobs(**filters)).jobs]

    assert await page(status=JobStatus.RUNNING) == running
    assert await page(status=JobStatus.RUNNING, job_type="solo") == ["solo-001", "solo-000"]
    assert await page() == list(reversed(ids))
    listed = await store.list_jobs(status=JobStatus.RUNNING)
    assert [job.id for job in listed] == running
    oldest_first = await store.get_by_status(JobStatus.RUNNING)
    assert [job.id for job in oldest_first] == running[::-1]
    assert await store.count_unfinished() == 5
    assert await store.count_unfinished(["solo"]) == 2
    assert await store.job_types() == ["email", "solo"]  # solo: running jobs only


async def test_pages_filter_by_status_type_tenant_and_id_text(store: Any) -> None:
    await _fill(store, 3, type="email")
    await _fill(store, 4, type="sms", tenant_id="acme")
    await _finish(store, "email-001", JobStatus.COMPLETED)

    async def ids(**filters: Any) -> list[str]:
        return [job.id for job in (await store.browse_jobs(**filters)).jobs]

    assert await ids(job_type="email") == ["email-002", "email-001", "email-000"]
    assert await ids(tenant_id="acme") == ["sms-003", "sms-002", "sms-001", "sms-000"]
    assert await ids(status=JobStatus.COMPLETED) == ["email-001"]
    assert await ids(status=JobStatus.PENDING, job_type="email") == ["email-002", "email-000"]
    assert await ids(search="-00") == [
        *["sms-003", "sms-002", "sms-001", "sms-000"],
        *["email-002", "email-001", "email-000"],
    ]
    assert await ids(search="s-002") == ["sms-002"]
    assert await ids(job_type="nothing") == []


async def test_a_filtered_page_continues_after_its_cursor(store: Any) -> None:
    await _fill(store, 6, type="email")
    await _fill(store, 6, type="sms")
    first = await store.browse_jobs(job_type="email", limit=4)
    rest = await store.browse_jobs(job_type="email", limit=4, cursor=first.next_cursor)
    assert [j.id for j in first.jobs] == ["email-005", "email-004", "email-003", "email-002"]
    assert [j.id for j in rest.jobs] == ["email-001", "email-000"]
    assert rest.next_cursor is None


@pytest.mark.parametrize("cursor", ["nonsense", "-1", "1|x"])
async def test_a_foreign_cursor_is_a_clear_error(store: Any, cursor: str) -> None:
    with pytest.raises(ValueError, match="cursor"):
        await store.browse_jobs(cursor=cursor)


@pytest.mark.parametrize("limit", [0, 501])
async def test_page_size_is_bounded(store: Any, limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        await store.browse_jobs(limit=limit)


async def test_summary_counts_by_status_and_type(store: Any) -> None:
    await _fill(store, 3, type="email")
    await _fill(store, 2, type="sms")
    await _finish(store, "email-000", JobStatus.COMPLETED)
    await _finish(store, "email-001", JobStatus.FAILED)
    summary = await store.summarize(minutes=5)
    assert dict(summary.counts) == {
        (JobStatus.PENDING, "email"): 1,
        (JobStatus.COMPLETED, "email"): 1,
        (JobStatus.FAILED, "email"): 1,
        (JobStatus.PENDING, "sms"): 2,
    }
    assert summary.estimated == frozenset()
    assert summary.by_status()[JobStatus.PENDING] == 3
    assert summary.job_types() == ["email", "sms"]
    [email_2] = [j for j in (await store.browse_jobs(search="email-002")).jobs]
    assert summary.oldest_pending_at is not None
    assert summary.oldest_pending_at <= email_2.created_at
    assert len(summary.per_minute) == 5
    assert sum(m.completed for m in summary.per_minute) == 1
    assert sum(m.failed for m in summary.per_minute) == 1
    assert summary.per_minute[-1].completed + summary.per_minute[-2].completed == 1


async def test_summary_of_an_empty_store(store: Any) -> None:
    summary = await store.summarize()
    assert dict(summary.counts) == {}
    assert summary.oldest_pending_at is None
    assert len(summary.per_minute) == 60
    assert all(m.completed == m.failed == 0 for m in summary.per_minute)


async def test_purge_by_filter_deletes_only_matching_final_jobs(store: Any) -> None:
    await _fill(store, 3, type="email")
    await _fill(store, 2, type="sms")
    await _finish(store, "email-000", JobStatus.COMPLETED)
    await _finish(store, "email-001", JobStatus.FAILED)
    await _finish(store, "sms-000", JobStatus.FAILED)
    assert await store.purge_jobs(status=JobStatus.FAILED, job_type="email") == 1
    assert await store.get("email-001") is None
    assert await store.get("sms-000") is not None
    assert await store.purge_jobs() == 2
    remaining = sorted(j.id for j in (await store.browse_jobs()).jobs)
    assert remaining == ["email-002", "sms-001"]


async def test_purge_refuses_unfinished_statuses(store: Any) -> None:
    await _fill(store, 1)
    with pytest.raises(ValueError, match="final"):
        await store.purge_jobs(status=JobStatus.PENDING)
    assert await store.get("a-000") is not None


def test_minute_series_fills_empty_minutes() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 1, 1, 12, 30, 45, tzinfo=UTC)
    series = minute_series(
        now,
        3,
        [
            (datetime(2026, 1, 1, 12, 30, 5, tzinfo=UTC), 2, 1),
            (datetime(2026, 1, 1, 12, 28, 0, tzinfo=UTC), 1, 0),
            (datetime(2026, 1, 1, 11, 0, 0, tzinfo=UTC), 9, 9),
        ],
    )
    assert [(m.minute.minute, m.completed, m.failed) for m in series] == [
        (28, 1, 0),
        (29, 0, 0),
        (30, 2, 1),
    ]


async def test_job_types_lists_each_type_once_sorted(store: Any) -> None:
    assert await store.job_types() == []
    await _fill(store, 3, type="sms")
    await _fill(store, 2, type="email")
    await _fill(store, 1, type="a")
    assert await store.job_types() == ["a", "email", "sms"]
