"""Webhook notifications: the outbox a transition writes (outbox.py), Standard Webhooks
signing (sign.py), the SSRF guard (ssrf.py), the delivery step with its retries
(deliver.py), and a verifying receiver for the demo, tests and benchmarks (receiver.py)."""
