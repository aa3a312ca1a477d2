"""Every code example in the docs runs here, so that none can rot.

- ``docs/examples/*.py`` are imported and their ``main()`` awaited: on the virtual
  clock (``autojump_clock``) when only Trio is involved, on the real clock under a
  generous deadline when a database is. What they print must equal the ``.out``
  file the page shows beside them.
- ``docs/examples/howto_testing.py`` is itself a test module: its tests are
  collected here. ``howto_custom_storage.DictStorage`` runs the storage contract.
- The ``$ ...`` lines of the tutorial's console blocks are executed as written
  (``trio-jobs`` workers in the background, stopped with Ctrl-C at the end).
- ``>>>`` blocks in the pages run as doctests; configuration files the pages show
  are parsed, and their ``trio-jobs`` command lines checked against the parser.
"""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import signal
import sys
import tomllib
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import trio
import trio.testing

import trio_jobs
from conftest import PG_DSN
from trio_jobs.cli import build_parser
from trio_jobs.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
EXAMPLES = DOCS / "examples"
PAGES = sorted(p for p in DOCS.rglob("*.rst") if "_build" not in p.parts)
DEADLINE = 60.0  # seconds of real time a database example may take; never asserted on
HEX_ID = re.compile(r"\b[0-9a-f]{32}\b")


def load(name: str) -> ModuleType:
    """Import ``docs/examples/<name>.py`` as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"docs_examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def documented_output(name: str) -> str:
    return (EXAMPLES / f"{name}.out").read_text()


# -- examples on the virtual clock ----------------------------------------------------

VIRTUAL_TIME_EXAMPLES = [
    "quickstart",
    "tutorial_01_first_job",
    "tutorial_02_priorities",
    "tutorial_03_retries",
    "tutorial_04_timeouts",
    "tutorial_05_cancellation",
    "tutorial_06_events",
    "tutorial_07_shutdown",
    "tutorial_10_schedules",
    "howto_custom_storage",
    "howto_porting",
    "howto_flow_control",
]


#: Examples with plain-def handlers, which run in worker threads.
THREAD_EXAMPLES = {"howto_porting"}


@pytest.mark.parametrize("name", VIRTUAL_TIME_EXAMPLES)
async def test_example_prints_what_its_page_shows(
    name: str, mock_clock: trio.testing.MockClock, capsys: pytest.CaptureFixture[str]
) -> None:
    # The clock jumps to the next deadline once every task waits. A worker thread
    # is no task: with threads, jump only after the loop stood still for a while in
    # real time, or an attempt's 60 s timeout could pass while its thread runs.
    mock_clock.autojump_threshold = 0.5 if name in THREAD_EXAMPLES else 0
    await load(name).main()
    assert capsys.readouterr().out == documented_output(name)


async def test_observing_example_logs_with_job_fields(
    autojump_clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    await load("howto_observing").main()
    out = HEX_ID.sub("<id>", capsys.readouterr().out)
    assert out == documented_output("howto_observing")


def documented_runs(name: str) -> list[list[str]]:
    """Split a ``.out`` file that shows several ``$ command`` runs into their outputs."""
    runs: list[list[str]] = []
    for line in documented_output(name).splitlines():
        if line.startswith("$ "):
            runs.append([])
        else:
            runs[-1].append(line.removeprefix("^C"))
    return runs


def matches(documented: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` has the documented lines, any number standing for any number."""
    patterns = [re.sub(r"\d+", r"\\d+", re.escape(line)) for line in documented]
    return len(patterns) == len(actual) and all(
        re.fullmatch(pattern, line) for pattern, line in zip(patterns, actual, strict=True)
    )


async def test_signals_example_stops_gracefully_then_by_force(
    autojump_clock: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    once, twice = documented_runs("tutorial_07_signals")

    async with trio.open_nursery() as nursery:
        await nursery.start(load("tutorial_07_signals").main)
        await trio.sleep(3)  # let a few jobs finish
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C
    lines = capsys.readouterr().out.splitlines()
    assert matches(once, lines), lines
    assert not lines[-1].startswith("stopped: 0 completed")

    async with trio.open_nursery() as nursery:
        await nursery.start(load("tutorial_07_signals").main)
        await trio.sleep(1)  # jobs are running: none finished yet
        os.kill(os.getpid(), signal.SIGINT)
        # Signals that arrive together count once: wait for the first to be handled.
        await trio.testing.wait_all_tasks_blocked()
        os.kill(os.getpid(), signal.SIGINT)
    lines = capsys.readouterr().out.splitlines()
    assert matches(twice, lines), lines
    assert lines[-1].startswith("stopped: 0 completed")


# -- the testing how-to is a test module -------------------------------------------------

_howto_testing = load("howto_testing")
test_howto_retry_backoff = _howto_testing.test_a_transient_error_is_retried_after_the_backoff
test_howto_client_error = _howto_testing.test_a_client_error_is_not_retried
test_howto_retry_policy = _howto_testing.test_which_errors_the_policy_retries
test_howto_timeout = _howto_testing.test_a_hung_gateway_times_out_on_every_attempt


def test_every_howto_testing_test_runs_here() -> None:
    shown = {name for name in vars(_howto_testing) if name.startswith("test_")}
    collected = {
        value.__name__
        for name, value in globals().items()
        if name.startswith("test_howto_") and callable(value)
    }
    assert shown == collected


# -- examples on a real database -------------------------------------------------------


async def test_cron_howto_two_workers_enqueue_the_report_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Both workers start at 09:00:30 in Paris on Friday 2025-03-14 (08:00:30 UTC),
    # so each backfills the 09:00 tick at once: the store lets one of them have it.
    start = 1741939230.0
    assert start == datetime(2025, 3, 14, 8, 0, 30, tzinfo=UTC).timestamp()
    monkeypatch.setattr("trio_jobs._periodic.time.time", lambda: start)
    howto = load("howto_cron_once")
    db = tmp_path / "jobs.db"
    with trio.fail_after(DEADLINE):
        async with (
            trio_jobs.JobRunner(storage=trio_jobs.SQLiteStorage(db), poll_interval=0.05) as a,
            trio_jobs.JobRunner(storage=trio_jobs.SQLiteStorage(db), poll_interval=0.05) as b,
        ):
            sent = trio.Event()
            for runner in (a, b):
                howto.setup(runner)
                runner.on("job:completed", lambda job, result: sent.set())
            await sent.wait()
            schedules = await b.schedules()
            await a.stop()
            await b.stop()
            jobs = await a.storage.list_jobs()
    assert howto.sent == ["2025-03-14T08:00:00+00:00"]
    assert [j.metadata["schedule"] for j in jobs] == ["daily-report"]
    assert [(s.key, s.last_run_at) for s in schedules] == [
        ("daily-report", datetime(2025, 3, 14, 8, tzinfo=UTC))
    ]


# -- the tutorial's shell sessions, run as written ---------------------------------------


def code_blocks(page: Path) -> list[tuple[str, list[str]]]:
    """Return the ``.. code-block:: LANG`` blocks of ``page``: (language, dedented lines)."""
    blocks: list[tuple[str, list[str]]] = []
    lines = page.read_text().splitlines()
    for i, line in enumerate(lines):
        match = re.match(r"(\s*)\.\. code-block:: (\w+)", line)
        if match is None:
            continue
        indent, body = len(match.group(1)), []
        for following in lines[i + 1 :]:
            if following.strip() and len(following) - len(following.lstrip()) <= indent:
                break
            body.append(following)
        text = "\n".join(body).strip("\n")
        margin = min(len(x) - len(x.lstrip()) for x in text.splitlines() if x.strip())
        blocks.append((match.group(2), [x[margin:] for x in text.splitlines()]))
    return blocks


def console_commands(page: Path) -> list[tuple[str, list[str]]]:
    """Return the ``$ command`` lines of a page's console blocks, each with its output."""
    commands: list[tuple[str, list[str]]] = []
    for language, lines in code_blocks(page):
        if language != "console":
            continue
        for line in lines:
            if line.startswith("$ "):
                commands.append((line[2:], []))
            else:
                commands[-1][1].append(line)
    return commands


def trio_jobs_command() -> list[str]:
    script = Path(sys.executable).with_name("trio-jobs")
    return [str(script)] if script.exists() else [sys.executable, "-m", "trio_jobs"]


SETUP_COMMANDS = {
    "python3 -m venv .venv",
    ". .venv/bin/activate",
    "pip install .",
    "cd docs/examples",
}


def is_setup(command: str) -> bool:
    """Commands that make the environment; the test suite runs in one already."""
    if command == "pip install '../..[postgres]'":  # the checkout, from docs/examples
        extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
        assert "postgres" in extras["optional-dependencies"]
        return True
    return command in SETUP_COMMANDS


class ShellSession:
    """Runs a page's ``$`` lines the way a reader types them, in a folder of examples."""

    def __init__(
        self,
        folder: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
        nursery: trio.Nursery,
        schema: str | None,
    ) -> None:
        self.folder = folder
        self.monkeypatch = monkeypatch
        self.capsys = capsys
        self.nursery = nursery
        self.workers: list[trio.Process] = []
        self.logs: list[Any] = []
        self.last_id: str | None = None
        for example in EXAMPLES.glob("*.py"):
            shutil.copy(example, folder)
        monkeypatch.chdir(folder)
        monkeypatch.syspath_prepend(str(folder))
        for name in ("TRIO_JOBS_DB", "TRIO_JOBS_DSN", "TRIO_JOBS_SCHEMA"):
            monkeypatch.delenv(name, raising=False)
        if schema is not None:
            # A fresh PostgreSQL schema rather than the page's default one.
            monkeypatch.setenv("TRIO_JOBS_SCHEMA", schema)

    def export(self, name: str, value: str) -> None:
        if name == "TRIO_JOBS_DSN":
            value = PG_DSN  # the test database, wherever the page's DSN points
        self.monkeypatch.setenv(name, value)

    async def run(self, command: str, documented: list[str]) -> None:
        words = shlex.split(command)
        if self.last_id is not None:
            words = [HEX_ID.sub(self.last_id, word) for word in words]
        if words[0] == "export":
            name, _, value = words[1].partition("=")
            self.export(name, value)
        elif words[0] == "python":
            await self.run_program(words[1], documented)
        elif words[:2] == ["trio-jobs", "worker"]:
            log = (self.folder / f"worker-{len(self.workers)}.log").open("wb")
            self.logs.append(log)
            run = partial(trio.run_process, stderr=log, check=False)
            process = await self.nursery.start(run, [*trio_jobs_command(), *words[1:]])
            self.workers.append(process)
        elif words[0] == "trio-jobs":
            # In this process (each command is one trio.run, here in a thread of its
            # own): the same main() as the script, without an interpreter's start-up.
            self.capsys.readouterr()
            status = await trio.to_thread.run_sync(cli_main, words[1:])
            captured = self.capsys.readouterr()
            assert status == 0, (command, captured.err)
            if words[1] == "submit":
                self.last_id = captured.out.strip()
        else:
            raise AssertionError(f"the docs show a command test_docs.py cannot run: {command}")

    async def run_program(self, script: str, documented: list[str]) -> None:
        """Run ``python script.py`` in this process: its ``main()``, under a deadline."""
        module = importlib.import_module(script.removesuffix(".py"))
        self.capsys.readouterr()
        await module.main()
        out = self.capsys.readouterr().out.splitlines()
        # Worker pids, and how many workers took part, vary from run to run.
        shown = [line for line in documented if not line.startswith("  pid ")]
        actual = [line for line in out if not line.startswith("  pid ")]
        assert matches(shown, actual), (documented, out)

    def forget_modules(self) -> None:
        """Unload the programs imported from this session's folder."""
        for name, module in list(sys.modules.items()):
            if Path(getattr(module, "__file__", None) or "/").parent == self.folder:
                del sys.modules[name]

    async def stop_workers(self) -> None:
        """Press Ctrl-C in each worker's terminal; each must stop cleanly."""
        for process in self.workers:
            process.send_signal(signal.SIGINT)
        for process in self.workers:
            await process.wait()
        for log_file in self.logs:
            log_file.close()
        for n, process in enumerate(self.workers):
            log = (self.folder / f"worker-{n}.log").read_text()
            assert process.returncode == 0, log
            assert "worker stopped" in log, log


async def run_page(
    page: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    *,
    schema: str | None = None,
) -> None:
    commands = [(c, out) for c, out in console_commands(DOCS / page) if not is_setup(c)]
    assert commands
    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as nursery:
            session = ShellSession(tmp_path, monkeypatch, capsys, nursery, schema)
            try:
                for command, documented in commands:
                    await session.run(command, documented)
            finally:
                with trio.CancelScope(shield=True):
                    await session.stop_workers()
                session.forget_modules()


async def test_tutorial_sqlite_worker_session_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    await run_page("tutorial/08-sqlite.rst", tmp_path, monkeypatch, capsys)
    assert (tmp_path / "jobs.db").exists()


async def test_tutorial_postgres_workers_session_runs_as_written(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    pg_schema: str,
) -> None:
    page = "tutorial/09-postgresql.rst"
    commands = [c for c, _ in console_commands(DOCS / page) if not is_setup(c)]
    assert sum(c.startswith("trio-jobs worker") for c in commands) == 2
    await run_page(page, tmp_path, monkeypatch, capsys, schema=pg_schema)


def test_every_command_shown_in_the_docs_parses() -> None:
    parser = build_parser()
    for page in PAGES:
        for command, _ in console_commands(page):
            words = shlex.split(command)
            if words[0] == "trio-jobs":
                parser.parse_args(words[1:])  # exits (SystemExit) on a bad option
            else:
                assert is_setup(command) or words[0] in ("export", "python"), (page, command)


# -- doctests, configuration files, SQL -----------------------------------------------


@pytest.mark.parametrize(
    "page",
    [p for p in PAGES if ">>> " in p.read_text()],
    ids=lambda p: str(p.relative_to(DOCS)),
)
def test_doctests_in_page(page: Path) -> None:
    result = doctest.testfile(
        str(page), module_relative=False, optionflags=doctest.ELLIPSIS, verbose=False
    )
    assert result.attempted > 0
    assert result.failed == 0


def test_toml_blocks_parse() -> None:
    blocks = [lines for p in PAGES for lang, lines in code_blocks(p) if lang == "toml"]
    assert blocks
    for lines in blocks:
        config = tomllib.loads("\n".join(lines))
        assert config["tool"]["pytest"]["ini_options"]["trio_mode"] is True


def test_sql_shown_is_the_stores_fence() -> None:
    source = (ROOT / "src/trio_jobs/storage/sqlite/_store.py").read_text()
    blocks = [lines for p in PAGES for lang, lines in code_blocks(p) if lang == "sql"]
    assert blocks
    for lines in blocks:
        where = " ".join(line.strip() for line in lines).partition(" WHERE ")[2]
        assert f'_FENCE: Final = "{where}"' in source


def test_systemd_unit_runs_a_valid_worker_command() -> None:
    unit = (EXAMPLES / "trio-jobs-worker@.service").read_text()
    [exec_start] = re.findall(r"^ExecStart=(.*)$", unit, re.MULTILINE)
    words = shlex.split(exec_start)
    assert Path(words[0]).name == "trio-jobs"
    args = build_parser().parse_args(words[1:])
    assert args.command == "worker"
    [timeout] = re.findall(r"^TimeoutStopSec=(\d+)$", unit, re.MULTILINE)
    assert int(timeout) > 300  # longer than the default job timeout


def test_kubernetes_deployment_runs_valid_commands() -> None:
    manifest = (EXAMPLES / "k8s-worker-deployment.yaml").read_text()
    commands = [json.loads(c) for c in re.findall(r"^\s+command: (\[.*\])$", manifest, re.M)]
    [args] = [json.loads(a) for a in re.findall(r"^\s+args: (\[.*\])$", manifest, re.M)]
    assert [c[:2] for c in commands] == [["trio-jobs", "migrate"], ["trio-jobs", "worker"]]
    parser = build_parser()
    assert parser.parse_args(commands[0][1:]).command == "migrate"
    worker = parser.parse_args([*commands[1][1:], *args])
    [grace] = re.findall(r"terminationGracePeriodSeconds: (\d+)", manifest)
    assert int(grace) > 300  # longer than the default job timeout
    assert worker.lease_duration < int(grace)


# -- the pages themselves --------------------------------------------------------------

ALLOWED_LANGUAGES = {"console", "text", "toml", "sql"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(DOCS)))
def test_page_shows_code_only_from_executed_sources(page: Path) -> None:
    """Python appears only through literalinclude (of files run here) or doctests."""
    text = page.read_text()
    for language, _ in code_blocks(page):
        assert language in ALLOWED_LANGUAGES, f"{page.name}: a {language} block"
    # A paragraph ending in "::" starts a literal block that nothing would run.
    literal = [line for line in text.splitlines() if line.rstrip().endswith("::")]
    assert all(line.lstrip().startswith("..") for line in literal), literal
    for include in re.findall(r"\.\. literalinclude:: (\S+)", text):
        assert (page.parent / include).resolve().is_file(), include


def test_every_example_file_is_shown_and_run() -> None:
    shown = {
        (page.parent / include).resolve().relative_to(EXAMPLES).as_posix()
        for page in PAGES
        for include in re.findall(r"\.\. literalinclude:: (\S+)", page.read_text())
    }
    files = {
        p.relative_to(EXAMPLES).as_posix()
        for p in EXAMPLES.rglob("*")
        if p.is_file() and p.name != "__init__.py" and "__pycache__" not in p.parts
    }
    assert files == shown
    run_here = {
        *VIRTUAL_TIME_EXAMPLES,
        "howto_observing",
        "howto_testing",
        "tutorial_07_signals",
        "howto_cron_once",
        "tutorial_08_handlers",  # loaded by the workers and by tutorial_08_sqlite
        "tutorial_08_sqlite",  # run by the tutorial's shell session
        "tutorial_08_producer",  # likewise
        "tutorial_09_postgres",  # likewise
        "recipe_fastapi_asyncio",  # the recipes run in test_recipes.py, against their
        "recipe_fastapi_trio",  # frameworks (and recipe_django/, a package)
        "recipe_flask",
    }
    assert {p.stem for p in EXAMPLES.glob("*.py")} == run_here
    for name in run_here:
        if (EXAMPLES / f"{name}.out").exists():
            assert f"{name}.out" in shown


def test_reference_documents_every_public_name() -> None:
    reference = (DOCS / "reference.rst").read_text()
    documented = set(re.findall(r"^\.\. auto\w+:: (\w+)$", reference, re.MULTILINE))
    assert documented == set(trio_jobs.__all__)


def test_cli_page_describes_every_command_and_option() -> None:
    page = (DOCS / "cli.rst").read_text()
    parser = build_parser()
    [commands] = [a for a in parser._actions if a.dest == "command"]
    assert isinstance(commands.choices, dict)
    for name, sub in commands.choices.items():
        assert re.search(rf"^``{name}\b", page, re.MULTILINE), name
        for action in sub._actions:
            for option in action.option_strings:
                assert option == "-h" or option == "--help" or f"``{option}" in page, option


# -- the custom store keeps the storage contract -----------------------------------------

_contract = importlib.import_module("test_storage_contract")
for _name in dir(_contract):
    if _name.startswith("test_"):
        globals()[f"test_dict_storage_{_name.removeprefix('test_')}"] = getattr(_contract, _name)


@pytest.fixture
def store_factory() -> Any:
    """Override conftest's: DictStorage, the custom store of the how-to (one object)."""
    example = load("howto_custom_storage")
    made: list[Any] = []

    def make(**kwargs: Any) -> Any:
        if not made:
            made.append(example.DictStorage(**kwargs))
        return made[0]

    return make


@pytest.fixture
async def store(store_factory: Any) -> Any:
    s = store_factory()
    await s.open()
    yield s
    await s.close()


@pytest.fixture
def durable_store_factory() -> Any:
    pytest.skip("DictStorage keeps nothing across processes")
