"""OpenAI's webhooks as tunectl receives them: ``fine_tuning.job.succeeded``, ``.failed`` and
``.cancelled`` events (``data.id`` is the fine-tuning job), signed the Standard Webhooks way
with the project's signing secret (``OPENAI_WEBHOOK_SECRET``), and at most 5 minutes old.

The check is the one the official SDK's ``client.webhooks.verify_signature`` makes: a
``whsec_`` secret is base64-decoded, any other is used as its UTF-8 bytes.
"""

from __future__ import annotations

from collections.abc import Mapping

from standardwebhooks import Webhook, WebhookVerificationError

from orchestrator.errors import WebhookRejected
from orchestrator.providers.base import ProviderWebhook

#: The events about a fine-tuning job ending: tunectl polls that job at once.
JOB_ENDED = frozenset({"fine_tuning.job.succeeded", "fine_tuning.job.failed",
                       "fine_tuning.job.cancelled"})


def verify(secret: str, body: bytes, headers: Mapping[str, str]) -> ProviderWebhook:
    """Verify an OpenAI webhook request and read the job it is about.

    Raises:
        WebhookRejected: no or a wrong signature, a timestamp over 5 minutes off, or a body
            that is not an event.
    """
    key: str | bytes = secret if secret.startswith("whsec_") else secret.encode()
    try:
        event = Webhook(key).verify(body, dict(headers))
    except (WebhookVerificationError, ValueError) as exc:  # bad headers, body not JSON
        raise WebhookRejected(f"the OpenAI webhook did not verify: {exc}") from None
    if not isinstance(event, dict) or not isinstance(event.get("type"), str):
        raise WebhookRejected("the OpenAI webhook is not an event (no type)")
    data = event.get("data")
    job_id = data.get("id") if isinstance(data, dict) else None
    ended = event["type"] in JOB_ENDED and isinstance(job_id, str) and job_id
    return ProviderWebhook(headers.get("webhook-id", ""), event["type"],
                           job_id if ended else None)
