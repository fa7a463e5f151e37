"""The upload step: put each dataset at the provider once per account and content hash.

A ``provider_files`` row is the claim. The first job to insert it uploads; others wait for
its file id. A claim left by a dead worker lapses (one that failed is ended at once), and
whoever takes it over first asks the provider whether the earlier upload landed (by the
hash in the file name) before uploading again, so a crash mid-upload never leaves two
copies.
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import col, select

from orchestrator.db.engine import session_scope
from orchestrator.db.models import Job, ProviderFile
from orchestrator.states import State
from orchestrator.steps.outcomes import Advance, Outcome, StepContext, Wait

#: How long to wait before looking again at an upload another job is doing.
CLAIM_WAIT_S = 2.0


def run(job: Job, ctx: StepContext) -> Outcome:
    """Upload the training and validation files (or reuse earlier uploads)."""
    training = ensure_uploaded(job, ctx, job.training_blob)
    validation = ensure_uploaded(job, ctx, job.validation_blob) if job.validation_blob else None
    if training is None or (job.validation_blob and validation is None):
        return Wait(CLAIM_WAIT_S)
    fields = {"training_file_id": training, "validation_file_id": validation}
    return Advance(State.SUBMITTING, reason=f"datasets at provider: training {training}"
                   + (f", validation {validation}" if validation else ""), fields=fields)


def ensure_uploaded(job: Job, ctx: StepContext, sha256: str) -> str | None:
    """The provider file id for ``sha256``, uploading if needed; None while another job is."""
    claimed, resumed = _claim(job, ctx, sha256)
    if isinstance(claimed, str):
        if ctx.provider.file_exists(claimed):
            return claimed
        # Deleted at the provider since (a user tidying up): forget it and upload again.
        with session_scope(ctx.engine) as session:
            session.connection().execute(sa.delete(ProviderFile).where(
                col(ProviderFile.provider) == job.provider,
                col(ProviderFile.account) == ctx.provider.account,
                col(ProviderFile.file_id) == claimed))
        claimed, resumed = _claim(job, ctx, sha256)
    if claimed is None or isinstance(claimed, str):
        return claimed
    provider = ctx.provider
    mine = (col(ProviderFile.id) == claimed, col(ProviderFile.file_id).is_(None),
            col(ProviderFile.claimed_by) == job.id)
    try:
        remote = provider.find_file(sha256) if resumed else None
        if remote is None:
            remote = provider.upload_file(ctx.blobs.open_path(sha256), sha256)
    except BaseException:
        # The upload may have landed anyway (a timeout, say): end the claim now, so that the
        # next attempt, by this job or another, looks at the provider before uploading.
        with session_scope(ctx.engine) as session:
            session.connection().execute(
                sa.update(ProviderFile).where(*mine).values(claimed_until=ctx.now()))
        raise
    with session_scope(ctx.engine) as session:
        session.connection().execute(
            sa.update(ProviderFile).where(*mine)
            .values(file_id=remote.id, bytes=remote.bytes or ProviderFile.bytes,
                    uploaded_at=ctx.now(), claimed_by=None, claimed_until=None)
        )
    return remote.id


def _claim(job: Job, ctx: StepContext, sha256: str) -> tuple[str | int | None, bool]:
    """Look up or claim the upload of ``sha256``.

    Returns (file id, False) if uploaded already; (row id, resumed) if this job now holds
    the claim, ``resumed`` meaning an earlier attempt may have uploaded it; (None, False)
    while another job's claim is live.
    """
    account, now = ctx.provider.account, ctx.now()
    until = now + timedelta(seconds=ctx.settings.lease_s)
    key = (col(ProviderFile.provider) == job.provider, col(ProviderFile.account) == account,
           col(ProviderFile.sha256) == sha256)
    for _ in range(3):
        with session_scope(ctx.engine) as session:
            row = session.exec(select(ProviderFile).where(*key)).first()
            if row is None:
                row = ProviderFile(provider=job.provider, account=account, sha256=sha256,
                                   bytes=ctx.blobs.open_path(sha256).stat().st_size,
                                   claimed_by=job.id, claimed_until=until, created_at=now)
                session.add(row)
                try:
                    session.flush()
                except sa.exc.IntegrityError:
                    session.rollback()
                    continue  # another job inserted the claim first: look again
                return row.id, False
            if row.file_id is not None:
                return row.file_id, False
            assert row.claimed_until is not None
            if row.claimed_until > now:
                return None, False  # another job, or an overlapping run of this one
            taken = session.connection().execute(
                sa.update(ProviderFile)
                .where(col(ProviderFile.id) == row.id, col(ProviderFile.file_id).is_(None),
                       col(ProviderFile.claimed_by) == row.claimed_by,
                       col(ProviderFile.claimed_until) == row.claimed_until)
                .values(claimed_by=job.id, claimed_until=until)
            ).rowcount
            if taken:
                return row.id, True
    return None, False
