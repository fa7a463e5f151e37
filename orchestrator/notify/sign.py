"""Signing a webhook as Standard Webhooks defines it, with the ``standardwebhooks`` package:
``v1,`` + base64 HMAC-SHA256 of ``<webhook-id>.<timestamp>.<body>`` with a ``whsec_`` secret."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from standardwebhooks import Webhook


def signed_headers(webhook_id: str, body: str, secrets: Sequence[str],
                   at: datetime) -> dict[str, str]:
    """The ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers of ``body``
    sent at ``at``: one signature per secret, space-separated, so that a receiver holding
    either the old or the new secret of a rotation accepts it."""
    # Webhook.sign() replaces the tzinfo instead of converting: give it UTC.
    at = at.astimezone(UTC)
    signatures = " ".join(Webhook(secret).sign(webhook_id, at, body) for secret in secrets)
    return {"webhook-id": webhook_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signatures}
