"""Storage plumbing, in one place: the table and queue clients built from the storage settings,
the row <-> dataclass codec, and the error handling every table store shares.

The stores (state.StateStore, operations.OperationStore, retention.RetentionStore) hold only
what their rows mean; how a row is encoded, how a fault becomes ``StateStoreUnavailable`` and
how a missing table is created on first use is written once, here. So is the one
optimistic-concurrency loop (``read_change_write``: read, change, write with If-Match, retry on
conflict) and what counts as a conflict (``CONFLICTS``, by exception type).
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import fields, is_dataclass
from datetime import datetime
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.data.tables import TableClient, TableServiceClient, UpdateMode

from ..common import StateStoreUnavailable, as_utc
from .transport import azure_options

log = logging.getLogger(__name__)
_T = TypeVar("_T")
_S = TypeVar("_S", bound="TableStore")

# Short timeouts and few retries: an invocation should fail fast with a clear 503 rather than
# hang on a dead endpoint.
CLIENT_OPTIONS: dict[str, Any] = dict(connection_timeout=5, read_timeout=15, retry_total=2)
TABLE_RETRY: dict[str, Any] = dict(retry_backoff_factor=0.2, retry_backoff_max=2)


# --- clients ---------------------------------------------------------------------------------


def table_client(storage: Any, table_name: str, credential_factory: Callable[[str | None], Any], **kwargs: Any) -> TableClient:
    """A TableClient for the configured storage (settings.StorageSettings)."""
    return table_service(storage, credential_factory, **kwargs).get_table_client(table_name)


def table_service(storage: Any, credential_factory: Callable[[str | None], Any], **kwargs: Any) -> TableServiceClient:
    """The table service of the configured storage; its table clients share one connection pool
    (one table per customer tenant, see shared/tenancy/customers.py)."""
    options = {**CLIENT_OPTIONS, **TABLE_RETRY, **kwargs}
    if storage.connection_string:
        # The SDK parses the connection string; its endpoint decides the proxy settings.
        endpoint = TableServiceClient.from_connection_string(storage.connection_string).url
        return TableServiceClient.from_connection_string(storage.connection_string, **options, **azure_options(endpoint))
    return TableServiceClient(endpoint=storage.table_service_uri, credential=_credential(storage, credential_factory),
                              **options, **azure_options(storage.table_service_uri))


def queue_client(storage: Any, queue_name: str, credential_factory: Callable[[str | None], Any]) -> Any:
    """A QueueClient for the configured storage, Base64 as the Functions host's queue trigger
    expects. azure-storage-queue is imported here, on first use: most invocations never queue."""
    from azure.storage.queue import (
        LinearRetry,
        QueueClient,
        QueueServiceClient,
        TextBase64DecodePolicy,
        TextBase64EncodePolicy,
    )

    # The storage SDK's own retry waits 15 s and more between tries (ExponentialRetry): with the
    # queue down, a deferred ask would hang ~45 s. Retry as briefly as the table client does.
    options: dict[str, Any] = dict(message_encode_policy=TextBase64EncodePolicy(),
                                   message_decode_policy=TextBase64DecodePolicy(), **CLIENT_OPTIONS,
                                   retry_policy=LinearRetry(backoff=1, retry_total=CLIENT_OPTIONS["retry_total"],
                                                            random_jitter_range=1))
    if storage.connection_string:
        endpoint = QueueServiceClient.from_connection_string(storage.connection_string).url
        return QueueClient.from_connection_string(storage.connection_string, queue_name, **options, **azure_options(endpoint))
    if not storage.queue_service_uri:
        raise StateStoreUnavailable("no queue endpoint: set AzureWebJobsStorage__queueServiceUri or __accountName")
    return QueueClient(storage.queue_service_uri, queue_name, credential=_credential(storage, credential_factory),
                       **options, **azure_options(storage.queue_service_uri))


def _credential(storage: Any, credential_factory: Callable[[str | None], Any]) -> Any:
    return credential_factory(storage.client_id if storage.use_managed_identity else None)


# --- rows ------------------------------------------------------------------------------------


def camel(name: str) -> str:
    """A field's property name in the table: ``next_allowed_at`` -> ``nextAllowedAt``."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def to_row(record: Any, partition_key: str, row_key: str, skip: Iterable[str] = ()) -> dict[str, Any]:
    """A dataclass as a table entity: one property per field, absent when None (so that a
    REPLACE clears it), except the fields in ``skip`` (keys and ETags)."""
    assert is_dataclass(record)
    left_out = set(skip)
    row: dict[str, Any] = {"PartitionKey": partition_key, "RowKey": row_key}
    for f in fields(record):
        value = getattr(record, f.name)
        if f.name not in left_out and value is not None:
            row[camel(f.name)] = value
    return row


def from_row(cls: type[_T], entity: Any, skip: Iterable[str] = (), **fixed: Any) -> _T:
    """The dataclass ``cls`` from a table entity: every field but those in ``skip`` (given in
    ``fixed`` instead); datetimes as aware UTC."""
    left_out = set(skip)
    values = dict(fixed)
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name in left_out:
            continue
        value = entity.get(camel(f.name))
        values[f.name] = as_utc(value) if isinstance(value, datetime) else value
    return cls(**values)


def take(rows: Iterable[Any], limit: int) -> Iterator[Any]:
    """The first ``limit`` rows of a query, without asking for a page beyond them."""
    for index, row in enumerate(rows):
        if index >= limit:
            return
        yield row


# --- faults ----------------------------------------------------------------------------------


def table_missing(exc: Exception) -> bool:
    """Whether a not-found error means the table itself is missing (not just a row). Some calls
    (create_entity) raise it without ``error_code``; the service's code is in the message then."""
    text = str(exc)
    # A transaction reports it by message only ("0:The table specified does not exist.").
    return getattr(exc, "error_code", None) == "TableNotFound" or "TableNotFound" in text \
        or "table specified does not exist" in text


def store_errors(method: Callable[..., _T]) -> Callable[..., _T]:
    """Create the table on first use, and turn storage faults into StateStoreUnavailable."""

    @functools.wraps(method)
    def wrapper(self: TableStore, *args: Any, **kwargs: Any) -> _T:
        try:
            try:
                return method(self, *args, **kwargs)
            except HttpResponseError as exc:  # ResourceNotFoundError, or a transaction's error
                if not table_missing(exc):
                    raise
                self._create_table()
                return method(self, *args, **kwargs)
        except StateStoreUnavailable:
            raise
        except AzureError as exc:
            first_line = (str(exc).splitlines() or [""])[0]
            raise StateStoreUnavailable(
                f"Table Storage ({self.endpoint}, table {self.table_name}) is unavailable: "
                f"{type(exc).__name__}: {first_line[:300]}"
            ) from exc

    return wrapper


# --- optimistic concurrency -------------------------------------------------------------------


class WriteConflict(ResourceModifiedError):
    """A conditional write inside an entity-group transaction lost (412): the SDK reports it as a
    TableTransactionError; ``TableStore.transact`` raises this instead, so that a transaction's
    conflict is caught by type like a single write's."""


# A conditional write lost its race: the row changed since it was read (If-Match; WriteConflict in
# a transaction) or appeared meanwhile (insert-if-absent). Every store catches these as "somebody
# else won"; a row that vanished meanwhile (ResourceNotFoundError) is told apart where it matters.
CONFLICTS: tuple[type[HttpResponseError], ...] = (ResourceModifiedError, ResourceExistsError)
# A conditional update or delete that found its row changed, or gone, since it was read.
CHANGED_OR_GONE: tuple[type[HttpResponseError], ...] = (*CONFLICTS, ResourceNotFoundError)


def read_change_write(
    read: Callable[[], _T], change: Callable[[_T], _T | None], write: Callable[[_T], _T | None], what: str,
    attempts: int = 5, current: _T | None = None, *, last_look: bool = False,
) -> tuple[_T, _T] | None:
    """The one optimistic-concurrency loop: read, change, write with If-Match; on a conflict read
    again and change again.

    ``change`` computes the new row from the current one (None: nothing to do, e.g. the row moved
    on); ``write`` writes it if nobody changed the row since it was read, and returns None if
    somebody did (a conflict, one of CONFLICTS). ``current``, the row just read, saves the first
    read. Returns (before, after as written), or None when there was nothing to do; raises
    StateStoreUnavailable naming ``what`` if the row kept changing.

    ``last_look``: the row is read again after the last lost write too, and ``change`` has the
    last word before giving up: None there (already done, e.g. our write landed and only its
    answer was lost, so that the client's retry saw our own change as a conflict) returns None.
    Thus every lost write, the last included, is followed by a read that ``change`` sees."""
    for _ in range(attempts):
        before, current = current if current is not None else read(), None
        after = change(before)
        if after is None:
            return None
        written = write(after)
        if written is not None:
            return before, written
    if last_look and change(read()) is None:
        return None
    raise StateStoreUnavailable(f"could not {what}: the row kept changing")


class TableStore:
    """What the stores that keep their rows in the state table share."""

    def __init__(self, table: TableClient):
        self._table = table
        self.table_name = table.table_name
        self.endpoint = table.url.split("?")[0]

    def sibling(self, cls: type[_S]) -> _S:
        """A store of another kind on this store's table (one client, one connection pool)."""
        return cls(self._table)

    def transact(self, operations: list[Any]) -> list[Any]:
        """Submit one entity-group transaction. An If-Match in it that no longer holds raises
        WriteConflict (one of CONFLICTS), as a single conditional write's ResourceModifiedError does."""
        try:
            return list(self._table.submit_transaction(operations))
        except ResourceModifiedError:
            raise  # the whole request refused: already the conflict's type
        except HttpResponseError as exc:  # a TableTransactionError: the failed operation's status and code
            if exc.status_code == 412 or getattr(exc, "error_code", None) == "UpdateConditionNotSatisfied":
                raise WriteConflict(message=exc.message, response=exc.response) from exc
            raise

    def _create_or_replace(self, entity: dict[str, Any], etag: str | None) -> str | None:
        """Create the row (``etag`` None) or replace it If-Match ``etag``: its new ETag, or None when
        another writer got there first (the caller's ``read_change_write`` reads again)."""
        try:
            if etag is None:
                meta = self._table.create_entity(entity)
            else:
                meta = self._table.update_entity(entity, mode=UpdateMode.REPLACE, etag=etag,
                                                 match_condition=MatchConditions.IfNotModified)
        except CHANGED_OR_GONE:
            return None
        return str(meta["etag"])

    def _create_table(self) -> None:
        try:
            self._table.create_table()
            log.info("created state table %s", self.table_name)
        except ResourceExistsError:
            pass
