"""The job client of the Django project: one per process, opened when Django starts."""

from __future__ import annotations

from django.apps import AppConfig, apps
from django.conf import settings

from trio_jobs import BlockingJobClient, SQLiteStorage


class JobsConfig(AppConfig):
    """Holds this process's client; opened when Django is ready, closed at exit."""

    name = "recipe_django"
    label = "recipe_jobs"
    client: BlockingJobClient | None = None

    def ready(self) -> None:
        """Open this process's client (with a pre-forking server: in each worker)."""
        if self.client is None:
            self.client = BlockingJobClient(SQLiteStorage(settings.TRIO_JOBS_DB)).open()


def jobs() -> BlockingJobClient:
    """The process's client, shared by Django's request threads."""
    client = apps.get_app_config("recipe_jobs").client  # type: ignore[attr-defined]
    assert isinstance(client, BlockingJobClient)
    return client
