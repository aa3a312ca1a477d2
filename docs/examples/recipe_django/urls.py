"""The recipe's URLs."""

from __future__ import annotations

from django.urls import path

from . import views

urlpatterns = [
    path("reports", views.order_report),
    path("jobs/<str:job_id>", views.job_status),
]
