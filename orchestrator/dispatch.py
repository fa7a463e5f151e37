"""Sending the step messages of leased work (jobs, deployments, webhook deliveries) to the
broker, and handing the leases back when it fails, so that the scheduler sends them again
at its next tick rather than when the leases expire."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import sqlalchemy as sa
import structlog

log = structlog.get_logger("tunectl.dispatch")

#: Sends a step message: (step name, id of the job, deployment or delivery, lease token).
Dispatch = Callable[[str, str, str], None]
#: One message to send: (step name, id, lease token).
Message = tuple[str, str, str]
#: Hands one unsent lease back: (connection, id, lease token).
Release = Callable[[sa.Connection, str, str], object]


def send_leased(engine: sa.Engine, dispatch: Dispatch, messages: Sequence[Message],
                release: Release) -> int:
    """Send ``messages`` in order; return how many were sent. When the broker fails, every
    unsent lease is handed back with ``release``, in one transaction, and the rest is left
    to the scheduler."""
    for i, (step, item_id, lease) in enumerate(messages):
        try:
            dispatch(step, item_id, lease)
        except Exception as exc:  # the broker is down (or the message could not be sent)
            log.error("dispatch.failed", step=step, id=item_id, unsent=len(messages) - i,
                      error=str(exc))
            with engine.begin() as conn:
                for _, rest, rest_lease in messages[i:]:
                    release(conn, rest, rest_lease)
            return i
    return len(messages)
