"""How a step fails: the one place assets turn imagesim's errors into Dagster failures.

An ``ImagesimError`` fails the step with its message (no traceback). A ``TransientError`` (an S3
endpoint or the Overpass API not answering) fails it too, but lets the asset's retry policy,
``TRANSIENT_RETRY``, run it again after a backoff; any other error is never retried. Run-level
retries (``dagster/max_retries`` on sensor and backfill runs, ``run_retries`` in the instance) cover
a lost worker instead: an ECS task or spot instance that went away.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from dagster import Backoff, Failure, Jitter, RetryPolicy

from imagesim_pipeline.errors import ImagesimError, TransientError

TRANSIENT_RETRY = RetryPolicy(max_retries=3, delay=20, backoff=Backoff.EXPONENTIAL, jitter=Jitter.PLUS_MINUS)
"""Steps that read the bucket or call Overpass: up to 3 more tries, ~20, 40, 80 s apart."""

RUN_RETRY_TAGS = {"dagster/max_retries": "2", "dagster/retry_strategy": "FROM_FAILURE"}
"""Tags of automatically launched runs: a run whose worker was lost is re-launched from the failure."""


@contextmanager
def step_errors(prefix: str = "", after: str = "") -> Iterator[None]:
    """Fail the step with the message of any ``ImagesimError`` raised inside (``prefix`` and ``after``
    around it); retryable only when the error is transient."""
    try:
        yield
    except ImagesimError as exc:
        message = f"{prefix}{exc}{after}"
        if isinstance(exc, TransientError):
            message += " (transient: the step is retried by its retry policy)"
        raise Failure(description=message, allow_retries=isinstance(exc, TransientError)) from None


def step_failure_message(event) -> str:
    """The first line of a STEP_FAILURE event's reason: a ``Failure``'s description as written, else the
    error's message."""
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description.strip().splitlines()[0]
    return data.error.message.strip().splitlines()[0] if data.error else "no message"


__all__ = ["RUN_RETRY_TAGS", "TRANSIENT_RETRY", "step_errors", "step_failure_message"]
