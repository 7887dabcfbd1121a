"""What the online loop stores: live events, recommendation records and feedback.

One definition shared by the store (:mod:`online.store`), the service (``POST /events``,
``POST /feedback``, ``POST /recommend``), the experiment report and the simulator.
Timestamps are naive ``datetime`` values on the shop's clock, like the data contract's ``ts``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from features.data import schema as s

PURCHASE = "purchase"
# A live event is a purchase line or one of the data contract's browsing events.
EVENT_TYPES: tuple[str, ...] = (PURCHASE, *s.EVENT_TYPES)
IMPRESSION = "impression"
CLICK = "click"
FEEDBACK_TYPES: tuple[str, ...] = (IMPRESSION, CLICK, "add_to_cart", PURCHASE)


@dataclass(frozen=True)
class LiveEvent:
    """One event posted to ``POST /events``: a purchase line, a view, an add or a remove.

    Attributes:
        event_id: The caller's id; a repeated id is ignored (idempotent ingest).
        event_type: One of :data:`EVENT_TYPES`.
        customer_id: Who.
        product_id: Which product.
        ts: When (shop clock).
        order_id: The order of a purchase line (None for browsing events).
        unit_price: Price paid per unit (purchases).
        quantity: Units (purchases; negative is a return); 1 for browsing events.
        session_id: Browsing session, if the shop has one.
        recommendation_id: The recommendation this event answers, if any.
    """

    event_id: str
    event_type: str
    customer_id: str
    product_id: str
    ts: datetime
    order_id: str | None = None
    unit_price: float | None = None
    quantity: float = 1.0
    session_id: str | None = None
    recommendation_id: str | None = None


@dataclass(frozen=True)
class RecommendedItem:
    """One item of a served list: its task, 1-based position in that task's list, score, price."""

    task: str
    position: int
    product_id: str
    score: float
    price: float


@dataclass(frozen=True)
class RecommendationRecord:
    """One ``POST /recommend`` answer as served: who, where, which variant and model version."""

    recommendation_id: str
    customer_id: str
    placement: str
    variant: str
    model_version: str
    ts: datetime
    items: tuple[RecommendedItem, ...]


@dataclass(frozen=True)
class Feedback:
    """What the shop reports against a recommendation.

    Attributes:
        feedback_id: The caller's id (a repeat is ignored); generated when not given.
        recommendation_id: The recommendation it answers (must exist).
        event_type: One of :data:`FEEDBACK_TYPES`.
        product_id: The item (must be in the recommendation); None for an impression of the
            whole answer.
        ts: When (shop clock).
        quantity: Units bought (purchase).
        unit_price: Price paid per unit (purchase).
    """

    feedback_id: str
    recommendation_id: str
    event_type: str
    product_id: str | None
    ts: datetime
    quantity: float = 1.0
    unit_price: float | None = None
