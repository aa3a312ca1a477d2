"""The web dashboard and Prometheus metrics (``pip install 'trio-jobs[dashboard]'``).

:func:`create_app` makes an ASGI app (Starlette, on Trio) showing a store's
queue; ``trio-jobs dashboard`` serves it with Hypercorn. :class:`JobMetrics`
holds the Prometheus metrics; :func:`serve` runs any ASGI app with Hypercorn's
Trio worker, inside your own nursery.
"""

from ._app import create_app as create_app
from ._app import create_metrics_app as create_metrics_app
from ._metrics import JobMetrics as JobMetrics
from ._serve import serve as serve

__all__ = ["JobMetrics", "create_app", "create_metrics_app", "serve"]
