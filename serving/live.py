"""``POST /events`` and ``POST /feedback``: request models and their checks.

Events are the data contract's rows (a purchase line, a view, an add or a remove), each with
the caller's ``event_id``; feedback rows report what happened to a served recommendation. Both
come in batches of at most :data:`MAX_BATCH`. Field errors are 400s naming the field
(``events.3.order_id``); references to recommendations that do not exist, or to items they did
not hold, are 400s naming ``feedback.<i>.recommendation_id`` / ``.product_id``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from online.records import (
    EVENT_TYPES,
    FEEDBACK_TYPES,
    IMPRESSION,
    PURCHASE,
    Feedback,
    LiveEvent,
    RecommendationRecord,
)

MAX_BATCH = 1000
MAX_ID = 128
Id = Annotated[str, Field(min_length=1, max_length=MAX_ID)]
EventType = Literal[EVENT_TYPES]  # type: ignore[valid-type]
FeedbackType = Literal[FEEDBACK_TYPES]  # type: ignore[valid-type]
# JSON has no datetime: an ISO 8601 string, checked by `_iso` and parsed by `shop_time`.
Timestamp = Annotated[str, Field(max_length=40, json_schema_extra={"format": "date-time"})]


def _parse(ts: str) -> datetime:
    return datetime.fromisoformat(ts)


def shop_time(ts: str | None) -> datetime:
    """A naive timestamp on the shop's clock: now when None; aware ones converted to UTC."""
    if ts is None:
        return datetime.now(UTC).replace(tzinfo=None)
    parsed = _parse(ts)
    return parsed.astimezone(UTC).replace(tzinfo=None) if parsed.tzinfo else parsed


def _iso(value: str | None) -> str | None:
    if value is not None:
        try:
            _parse(value)
        except ValueError:
            raise ValueError(f"not an ISO 8601 timestamp: {value[:40]!r}") from None
    return value


class EventIn(BaseModel):
    """One live event, in the data contract's shape plus its id."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    event_id: Id = Field(description="Your id for the event; a repeated id is ignored.")
    event_type: EventType = Field(description="purchase, view, add_to_cart or remove_from_cart.")
    customer_id: Id
    product_id: Id
    ts: Timestamp | None = Field(None, description="ISO 8601; default: now (server).")
    order_id: Id | None = Field(None, description="Required for a purchase.")
    unit_price: float | None = Field(None, ge=0, description="Required for a purchase.")
    quantity: float = Field(1.0, description="Units; negative is a return (purchases).")
    session_id: Id | None = None
    recommendation_id: Id | None = Field(None, description="The recommendation it answers.")

    _ts = field_validator("ts")(_iso)

    @model_validator(mode="after")
    def _purchase_fields(self) -> EventIn:
        if self.event_type == PURCHASE:
            if self.order_id is None:
                raise ValueError("order_id is required for a purchase")
            if self.unit_price is None:
                raise ValueError("unit_price is required for a purchase")
        if not math.isfinite(self.quantity) or self.quantity == 0:
            raise ValueError("quantity must be a finite non-zero number")
        if self.unit_price is not None and not math.isfinite(self.unit_price):
            raise ValueError("unit_price must be finite")
        return self

    def record(self) -> LiveEvent:
        """The stored form."""
        return LiveEvent(
            event_id=self.event_id,
            event_type=self.event_type,
            customer_id=self.customer_id,
            product_id=self.product_id,
            ts=shop_time(self.ts),
            order_id=self.order_id,
            unit_price=self.unit_price,
            quantity=float(self.quantity),
            session_id=self.session_id,
            recommendation_id=self.recommendation_id,
        )


class EventsRequest(BaseModel):
    """``POST /events``: 1..1000 events, stored before the answer (durable, idempotent)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    events: Annotated[list[EventIn], Field(min_length=1, max_length=MAX_BATCH)]


class FeedbackIn(BaseModel):
    """What happened to a served recommendation."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    recommendation_id: Id
    event_type: FeedbackType = Field(description="impression, click, add_to_cart or purchase.")
    product_id: Id | None = Field(
        None, description="The item; may be omitted for an impression of the whole answer."
    )
    feedback_id: Id | None = Field(
        None,
        description="Your id; default '<recommendation_id>:<event_type>:<product_id or *>', so "
        "reporting the same impression, click or purchase twice counts it once.",
    )
    ts: Timestamp | None = Field(None, description="ISO 8601; default: now (server).")
    quantity: float = Field(1.0, gt=0)
    unit_price: float | None = Field(None, ge=0)

    _ts = field_validator("ts")(_iso)

    @model_validator(mode="after")
    def _item_needed(self) -> FeedbackIn:
        if self.product_id is None and self.event_type != IMPRESSION:
            raise ValueError(f"product_id is required for {self.event_type!r} feedback")
        if not math.isfinite(self.quantity):
            raise ValueError("quantity must be finite")
        if self.unit_price is not None and not math.isfinite(self.unit_price):
            raise ValueError("unit_price must be finite")
        return self

    def record(self) -> Feedback:
        """The stored form."""
        fid = self.feedback_id or (
            f"{self.recommendation_id}:{self.event_type}:{self.product_id or '*'}"
        )
        return Feedback(
            feedback_id=fid,
            recommendation_id=self.recommendation_id,
            event_type=self.event_type,
            product_id=self.product_id,
            ts=shop_time(self.ts),
            quantity=float(self.quantity),
            unit_price=self.unit_price,
        )


class FeedbackRequest(BaseModel):
    """``POST /feedback``: 1..1000 rows against served recommendations."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    feedback: Annotated[list[FeedbackIn], Field(min_length=1, max_length=MAX_BATCH)]


class StoredResponse(BaseModel):
    """How many rows were stored, and how many were repeats of stored ids (ignored)."""

    stored: int
    duplicates: int
    warnings: list[str] = Field(default_factory=list)
    error: str | None = Field(None, description="Why nothing was stored (503: the store).")


def check_references(
    field: str,
    refs: Sequence[tuple[str | None, str | None]],
    lookup: dict[str, RecommendationRecord | None],
) -> None:
    """Every ``(recommendation_id, product_id)`` names a stored recommendation and one of its
    items (``product_id`` None: any).

    Args:
        field: The batch field (``events`` or ``feedback``), for the error's location.
        refs: Per row, its recommendation id (None: no reference) and product id.
        lookup: Recommendation id -> stored record (None when unknown).

    Raises:
        ValidationError: Naming every bad row's field (``loc``), answered as a 400 like any
            other invalid field.
    """
    errors: list[InitErrorDetails] = []
    for i, (rec_id, product) in enumerate(refs):
        if rec_id is None:
            continue
        record = lookup.get(rec_id)
        if record is None:
            where, why = "recommendation_id", f"unknown recommendation {rec_id!r}"
        elif product is not None and product not in {it.product_id for it in record.items}:
            where, why = "product_id", f"{product!r} was not recommended in {rec_id!r}"
        else:
            continue
        message = f"{field}.{i}.{where}: {why}"
        errors.append(
            {
                "type": PydanticCustomError("unknown_reference", message),
                "loc": (field, i, where),
                "input": rec_id if where == "recommendation_id" else product,
            }
        )
    if errors:
        raise ValidationError.from_exception_data(f"{field} references", errors)
