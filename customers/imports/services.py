"""Every write of an import: upload (staging), start, run (validate, apply), discard."""

from __future__ import annotations

import logging
import time

from django.db import connection, transaction
from django.utils import timezone

from core.audit import audit
from core.errors import FieldError, InputError

from . import apply, mapping, staging, validation
from .models import CustomerImport

logger = logging.getLogger(__name__)

# Rows applied per transaction: each chunk commits with its own signal, so listeners hear of
# at most this many customers at once and the page's progress moves.
CHUNK_ROWS = 50_000
# A run hands over to a fresh task before django-q2's timeout (Q_CLUSTER["timeout"]) stops it.
RUN_SECONDS = 60


def _chunks(file, head: bytes):
    yield head
    while chunk := file.read(staging.CHUNK):
        yield chunk


def import_upload(*, file, filename: str, actor: str, user=None) -> CustomerImport:
    """Stream ``file`` (any object with ``read(size)``) into a new import's staging table.

    Raises :class:`InputError` (nothing stored) for a file that is not a CSV with a header
    and at least one row, naming the first bad line. The import waits for its mapping.
    """
    started = time.monotonic()
    head = file.read(staging.HEAD)
    columns, delimiter = staging.read_header(head)
    with transaction.atomic():
        customer_import = CustomerImport.objects.create(
            filename=(filename or "upload.csv")[:255], columns=columns, delimiter=delimiter, actor=actor,
            created_by=user if user is not None and user.is_authenticated else None,
        )
        table = customer_import.staging_table
        staging.create(table, len(columns))
        try:
            rows = staging.copy(table, len(columns), delimiter, _chunks(file, head))
        except InputError:
            transaction.set_rollback(True)
            raise
        if rows == 0:
            transaction.set_rollback(True)
            raise staging.broken("the file has a header but no rows")
        customer_import.rows_total = rows
        customer_import.preview = staging.preview(table, len(columns))
        customer_import.phase_seconds = {"staging": round(time.monotonic() - started, 2)}
        customer_import.save(update_fields=["rows_total", "preview", "phase_seconds"])
        audit(actor=actor, action="import.uploaded", object_type="customer_import", object_id=customer_import.pk,
              details={"filename": customer_import.filename, "rows": rows, "columns": len(columns)})
    return customer_import


def import_start(*, customer_import: CustomerImport, mapping_spec, match_on: str, update_existing: bool,
                 actor: str) -> CustomerImport:
    """Check the mapping and queue the import. Raises :class:`InputError` (nothing written)
    for a bad mapping, or when the import was started already."""
    cleaned = mapping.check(mapping_spec, columns=customer_import.columns, match_on=match_on)
    with transaction.atomic():
        locked = CustomerImport.objects.select_for_update().get(pk=customer_import.pk)
        if locked.status != CustomerImport.Status.STAGED:
            raise InputError([FieldError("status", f"this import is {locked.get_status_display().lower()} already")])
        locked.mapping, locked.match_on, locked.update_existing = cleaned, match_on, update_existing
        locked.status = CustomerImport.Status.QUEUED
        locked.save(update_fields=["mapping", "match_on", "update_existing", "status"])
        audit(actor=actor, action="import.started", object_type="customer_import", object_id=locked.pk,
              details={"filename": locked.filename, "rows": locked.rows_total, "match_on": match_on,
                       "update_existing": update_existing,
                       "mapping": {c: m for c, m in cleaned.items() if m["to"] != "skip"}})
        transaction.on_commit(lambda: _enqueue(locked.pk))
    return locked


def _enqueue(import_id: int) -> None:
    from django_q.tasks import async_task

    async_task("customers.imports.tasks.run", import_id, task_name=f"customer import {import_id}")


def import_discard(*, customer_import: CustomerImport, actor: str) -> bool:
    """Drop an import that waits for its mapping, with its staged file. Returns whether it did."""
    with transaction.atomic():
        locked = CustomerImport.objects.select_for_update().get(pk=customer_import.pk)
        if locked.status != CustomerImport.Status.STAGED:
            return False
        staging.drop(locked.staging_table)
        locked.status, locked.finished_at = CustomerImport.Status.DISCARDED, timezone.now()
        locked.save(update_fields=["status", "finished_at"])
        audit(actor=actor, action="import.discarded", object_type="customer_import", object_id=locked.pk)
    return True


def import_run(*, import_id: int, seconds: float = RUN_SECONDS) -> str | None:
    """Validate then apply an import, a chunk per transaction, for up to ``seconds``; queue
    the rest as a new task. Safe to run twice, also at once: each step locks the import's row
    and checks its status (and, for chunks, how far it got) before doing anything.
    Returns the status it left the import in (None for an unknown import)."""
    deadline = time.monotonic() + seconds
    Status = CustomerImport.Status
    updated = CustomerImport.objects.filter(pk=import_id, status=Status.QUEUED).update(
        status=Status.VALIDATING, started_at=timezone.now())
    try:
        if updated or CustomerImport.objects.filter(pk=import_id, status=Status.VALIDATING).exists():
            _validate(import_id)
        # At least one chunk per run, so every run moves the import on.
        while True:
            status = _apply_next(import_id)
            if status != Status.APPLYING:
                return status
            if time.monotonic() >= deadline:
                break
    except Exception as exc:
        logger.exception("customer import %s failed", import_id)
        _fail(import_id, exc)
        return Status.FAILED
    _enqueue(import_id)
    return Status.APPLYING


def _validate(import_id: int) -> None:
    started = time.monotonic()
    with transaction.atomic():
        customer_import = CustomerImport.objects.select_for_update().filter(pk=import_id).first()
        if customer_import is None or customer_import.status != CustomerImport.Status.VALIDATING:
            return
        rejected = validation.build(customer_import)
        customer_import.rejected_count = rejected
        customer_import.status = CustomerImport.Status.APPLYING
        customer_import.applying_at = timezone.now()
        customer_import.phase_seconds = {**customer_import.phase_seconds,
                                         "validating": round(time.monotonic() - started, 2)}
        customer_import.save(update_fields=["rejected_count", "status", "applying_at", "phase_seconds"])


def _apply_next(import_id: int) -> str | None:
    """Apply the next chunk in one transaction (one signal); returns the status after it."""
    started = time.monotonic()
    with transaction.atomic():
        customer_import = CustomerImport.objects.select_for_update().filter(pk=import_id).first()
        if customer_import is None:
            return None
        if customer_import.status != CustomerImport.Status.APPLYING:
            return customer_import.status
        plan = validation.Plan.of(customer_import)
        low = customer_import.applied_through
        high = low + CHUNK_ROWS
        # The first row after the header is line 2.
        outcome = apply.chunk(customer_import, plan, low=low + 1, high=high + 1, now=timezone.now())
        customer_import.applied_through = high
        customer_import.created_count += outcome.created
        customer_import.updated_count += outcome.updated
        customer_import.unchanged_count += outcome.unchanged
        customer_import.warning_count += outcome.warned
        seconds = dict(customer_import.phase_seconds)
        seconds["applying"] = round(seconds.get("applying", 0) + time.monotonic() - started, 2)
        customer_import.phase_seconds = seconds
        if high >= customer_import.rows_total:
            customer_import.applied_through = customer_import.rows_total
            customer_import.status = CustomerImport.Status.DONE
            customer_import.finished_at = timezone.now()
            staging.drop(customer_import.staging_table, customer_import.work_table)
        customer_import.save()
        return customer_import.status


def _fail(import_id: int, exc: Exception) -> None:
    message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    with transaction.atomic():
        customer_import = CustomerImport.objects.select_for_update().filter(pk=import_id).first()
        if customer_import is None or customer_import.is_finished:
            return
        # Rows applied before the failure stay applied (each chunk committed on its own).
        customer_import.status = CustomerImport.Status.FAILED
        customer_import.error = (f"{message[:500]}. The first {customer_import.applied_through} rows were applied; "
                                 "upload the file again to apply the rest (applied rows come out unchanged).")
        customer_import.finished_at = timezone.now()
        staging.drop(customer_import.staging_table, customer_import.work_table)
        customer_import.save(update_fields=["status", "error", "finished_at"])


def staged_rows(customer_import: CustomerImport) -> int:
    """Rows in the staging table (for checks); 0 once it is dropped."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s)", [customer_import.staging_table])
        if cursor.fetchone()[0] is None:
            return 0
        cursor.execute(f"SELECT count(*) FROM {customer_import.staging_table}")
        return cursor.fetchone()[0]


