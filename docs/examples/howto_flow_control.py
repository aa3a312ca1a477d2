"""Flow control: a cap across workers, a rate, a pause, and fair turns between tenants."""

from typing import Any

import trio

from trio_jobs import Job, JobContext, JobRunner


async def main() -> None:
    starts: list[tuple[float, str, str]] = []

    async def call_api(job: Job[Any], ctx: JobContext[Any]) -> None:
        starts.append((trio.current_time(), job.type, str(job.payload)))
        await trio.sleep(1)

    async with JobRunner(concurrency=10) as runner:
        for job_type in ("charge-card", "send-sms", "import-row"):
            runner.register_handler(job_type, call_api)

        # start-cap
        await runner.set_limits("charge-card", max_running=2)
        # end-cap
        # start-rate
        await runner.set_limits("send-sms", rate=(3, 60.0))
        # end-rate
        for n in range(4):
            await runner.submit("charge-card", n)
            sms = await runner.submit("send-sms", n)
        await trio.sleep(1.5)
        # start-why
        print(f"send-sms 3 waits: {await runner.held_back(sms.id)}")
        for job_type, held in (await runner.held_back_types()).items():
            print(f"{job_type} is held back: {held}")
        # end-why
        await runner.join()

        # start-pause
        await runner.pause("send-sms")
        await runner.submit("send-sms", "while paused")
        await trio.sleep(5)  # nothing starts
        await runner.resume("send-sms")
        # end-pause
        await runner.join()

        # start-fair
        await runner.set_limits("import-row", fair_tenants=True)
        await runner.set_tenant_weight("premium", 2.0)
        # end-fair
        await runner.pause("import-row")
        for n in range(30):
            await runner.submit("import-row", f"big-{n}", tenant_id="big")
        for n in range(3):
            await runner.submit("import-row", f"premium-{n}", tenant_id="premium")
            await runner.submit("import-row", f"small-{n}", tenant_id="small")
        await runner.resume("import-row")
        with trio.move_on_after(1.5):
            await runner.join()
        await runner.stop(graceful=False)
    for at, job_type, payload in sorted(starts):
        print(f"t={at:g}s {job_type} {payload}")


if __name__ == "__main__":
    trio.run(main)
