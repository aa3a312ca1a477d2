"""Django settings for the recipe: the least a project needs, plus the job store."""

from __future__ import annotations

import os

SECRET_KEY = "recipe-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "recipe_django.urls"
INSTALLED_APPS = ["recipe_django.jobs.JobsConfig"]
MIDDLEWARE: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# Where the jobs go: the file (or a DSN for PostgresStorage) the workers read.
TRIO_JOBS_DB = os.environ.get("TRIO_JOBS_DB", "jobs.db")
