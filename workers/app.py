"""The Celery app, configured so that no step message is lost.

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after
  its step ran, and goes back to the queue if the worker process dies mid-step.
- ``worker_prefetch_multiplier = 1``: a worker holds only the message it is running.
- The broker's visibility timeout is longer than any step (steps are bounded by the lease),
  so a slow step is never handed to a second worker while it runs.
- Each step renews its job's lease when it starts and is killed at 90 % of it
  (``task_time_limit``), so no step outlives its lease.
- Webhook deliveries have a queue of their own (``tunectl.notify``), so that slow
  endpoints never take the slots of job steps (``tunectl``). ``tunectl worker`` consumes
  both unless told otherwise; an operator can give deliveries workers of their own.
Even so, the broker only carries wake-ups: a lost message costs one lease, after which the
scheduler sends the step again from the database.
"""

from __future__ import annotations

from typing import Any

from celery import Celery, signals
from kombu.transport import sqlalchemy as kombu_sqlalchemy

from orchestrator import log
from orchestrator.config import STEP_SHARE_OF_LEASE, get_settings
from orchestrator.db.engine import get_engine
from orchestrator.notify.deliver import reset_client
from orchestrator.providers.http import set_shared_client

#: The queue of job steps, deployments' undeploy steps and queued submissions.
QUEUE = "tunectl"
#: The queue of webhook deliveries.
NOTIFY_QUEUE = "tunectl.notify"
#: What ``tunectl worker`` consumes by default.
QUEUES = (QUEUE, NOTIFY_QUEUE)


def create_app() -> Celery:
    """Build the app from tunectl's settings."""
    settings = get_settings()
    app = Celery("tunectl", broker=settings.broker_url, include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=QUEUE,
        task_routes={"tunectl.notify.deliver": {"queue": NOTIFY_QUEUE}},
        # A step starts with at least this share of its lease left (db.queries.take_up);
        # ending it in time means a stuck step never overlaps the retry the scheduler sends
        # once the lease expires.
        task_time_limit=settings.lease_s * STEP_SHARE_OF_LEASE,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": settings.broker_visibility_timeout_s},
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
    )
    if settings.broker_url.startswith("sqla+"):
        # kombu passes transport options to create_engine, so the SQLAlchemy transport's
        # polling interval (1 s by default) can only be set on the class.
        kombu_sqlalchemy.Transport.polling_interval = 0.05
        app.conf.broker_transport_options = {}
    return app


@signals.setup_logging.connect  # type: ignore[untyped-decorator]
def _setup_logging(**_: Any) -> None:
    settings = get_settings()
    log.configure(settings.log_format, settings.log_level)


@signals.worker_process_init.connect  # type: ignore[untyped-decorator]
def _after_fork(**_: Any) -> None:
    # Connections opened by the parent must not be shared with forked children.
    get_engine(get_settings().database_url).dispose(close=False)
    set_shared_client(None)
    reset_client()


app = create_app()
