"""The retry schedule of webhook deliveries: the delay before each attempt, jittered."""

from __future__ import annotations

import random

from orchestrator.config import Settings

#: Each delay is the schedule's, give or take this share.
JITTER = 0.2


def delay_s(settings: Settings, attempts: int) -> float:
    """Seconds before the attempt after ``attempts`` failed ones (0: the first attempt,
    counted from the event): ``webhook_retry_schedule_s[attempts]`` (its last delay once
    past its end), with ±20 % jitter."""
    schedule = settings.webhook_retry_schedule_s
    return schedule[min(attempts, len(schedule) - 1)] * random.uniform(1 - JITTER, 1 + JITTER)
