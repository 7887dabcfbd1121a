"""Export the live store into the data contract: the shop's folder plus what happened live.

:func:`export_to_contract` writes a new shop folder that ``load_shop`` reads and ``xsell
train`` trains on: the shop's own tables, with the store's live rows appended in the
contract's shape.

- **Purchases**: live ``purchase`` events become ``purchases`` rows (``order_id, customer_id,
  product_id, ts, unit_price, quantity``).
- **Browsing**: live ``view`` / ``add_to_cart`` / ``remove_from_cart`` events become
  ``events`` rows (``session_id`` kept, missing allowed). Feedback reported against a
  recommendation adds browsing too: a ``click`` opens the product page, so it becomes a
  ``view``; a feedback ``add_to_cart`` becomes an ``add_to_cart`` (the customer is the
  recommendation's). A shop that also posts that page view or cart add to ``/events`` has it
  twice; both are real signals of interest, so both are kept.
- **Feedback purchases are not added as purchases**: the shop posts its orders to
  ``/events``, so every purchase is already a live ``purchase`` event; counting the feedback
  purchase too would double it.
- **What the shop already has**: only rows with ``ts`` strictly after the latest ``ts`` in the
  shop's ``purchases`` and ``events`` are appended; earlier ones are assumed to be in the
  shop's own export already and are counted as skipped. Exporting into ``out`` and then
  exporting again from ``out`` therefore adds nothing twice.
- **Unknown ids**: a live row naming a customer or product that is not in the shop's tables is
  dropped and counted (the loader would reject the whole table). So is a purchase without an
  ``order_id`` or ``unit_price`` (required by the contract), and feedback whose
  recommendation the store does not have.

**Positions.** Impressions (what was shown, in which list, at which 1-based position) are
written to ``out/feedback/impressions.parquet`` with the columns of :data:`IMPRESSION_COLUMNS`
(the loader reads only the top-level table files, so the subfolder does not disturb it). They
are *not* turned into training negatives: clicks and purchases are position-biased (an item
shown first is clicked more because it is first), so "shown and not bought" confounds the
item's appeal with its slot. Training positives come from purchases, as everywhere in the data
contract; the positions are exported so that a later propensity-weighted training (each
click weighted by the inverse of the chance that its position is looked at) can use them. An
impression without a product covers every item of the answer; one with a product covers that
item. Impressions are written in full on every export (the shop's export never has them).

Only the contract's tables and ``feedback/`` are written: other files of the shop folder
(a synthetic shop's ``truth/``, for one) are not copied.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

from features.data import schema as s
from features.data.io import Shop, load_shop, table_path
from online.records import CLICK, IMPRESSION, PURCHASE
from online.store import EventStore

log = logging.getLogger(__name__)

ExportFormat = Literal["parquet", "csv"]
FEEDBACK_DIR = "feedback"
IMPRESSIONS_FILE = "impressions.parquet"
IMPRESSION_COLUMNS = (
    "recommendation_id",
    s.CUSTOMER_ID,
    "variant",
    "model_version",
    "task",
    "position",
    s.PRODUCT_ID,
    s.TS,
)
PURCHASE_COLUMNS = (s.ORDER_ID, s.CUSTOMER_ID, s.PRODUCT_ID, s.TS, s.UNIT_PRICE, s.QUANTITY)
EVENT_COLUMNS = (s.CUSTOMER_ID, s.PRODUCT_ID, s.TS, s.EVENT_TYPE, s.SESSION_ID)
# Feedback types that are browsing in the contract, and the event type each becomes.
FEEDBACK_AS_EVENT = {CLICK: s.VIEW, s.ADD_TO_CART: s.ADD_TO_CART}

UNKNOWN_ID = "unknown customer or product"
INCOMPLETE_PURCHASE = "purchase without order_id or unit_price"
UNKNOWN_RECOMMENDATION = "feedback for a recommendation not in the store"
NO_PRODUCT = "click or add_to_cart feedback without a product"


@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export_to_contract` wrote.

    Attributes:
        out: The shop folder written.
        cutoff: Latest ``ts`` in the shop's purchases and events; only later live rows were
            appended (None: the shop has no rows, everything was appended).
        purchases_added: Live purchase lines appended to ``purchases``.
        events_added: Live browsing events appended to ``events``.
        feedback_events_added: Feedback clicks (as views) and adds appended to ``events``.
        skipped_before_cutoff: Live rows at or before ``cutoff`` (already in the shop).
        dropped: Reason -> live rows after the cutoff not appended (reasons with rows only).
        impressions: Rows written to ``feedback/impressions.parquet``.
    """

    out: Path
    cutoff: pd.Timestamp | None
    purchases_added: int
    events_added: int
    feedback_events_added: int
    skipped_before_cutoff: int
    dropped: dict[str, int] = field(default_factory=dict)
    impressions: int = 0

    def lines(self) -> list[str]:
        """Human-readable summary lines."""
        out = [
            f"wrote {self.out}",
            f"appended after {self.cutoff}: {self.purchases_added:,d} purchase lines, "
            f"{self.events_added:,d} events, {self.feedback_events_added:,d} from feedback",
            f"skipped {self.skipped_before_cutoff:,d} live rows at or before the shop's last ts",
        ]
        out.extend(f"dropped {n:,d} ({reason})" for reason, n in self.dropped.items() if n)
        out.append(f"impressions: {self.impressions:,d} rows in {FEEDBACK_DIR}/{IMPRESSIONS_FILE}")
        return out


def live_purchases(events: pd.DataFrame) -> pd.DataFrame:
    """The store's ``purchase`` events as contract ``purchases`` rows (:data:`PURCHASE_COLUMNS`)."""
    rows = events.loc[events[s.EVENT_TYPE] == PURCHASE]
    return rows.loc[:, list(PURCHASE_COLUMNS)].reset_index(drop=True)


def live_browsing(events: pd.DataFrame) -> pd.DataFrame:
    """The store's browsing events as contract ``events`` rows (:data:`EVENT_COLUMNS`)."""
    rows = events.loc[events[s.EVENT_TYPE].isin(s.EVENT_TYPES)]
    return rows.loc[:, list(EVENT_COLUMNS)].reset_index(drop=True)


def feedback_browsing(feedback: pd.DataFrame, recommendations: pd.DataFrame) -> pd.DataFrame:
    """Clicks as ``view`` and feedback adds as ``add_to_cart`` events (:data:`EVENT_COLUMNS`).

    The customer is the recommendation's; rows whose recommendation is unknown or that name no
    product keep a missing ``customer_id`` / ``product_id`` (dropped and counted by the caller).
    Session ids are missing: feedback carries none.
    """
    rows = feedback.loc[feedback["event_type"].isin(list(FEEDBACK_AS_EVENT))]
    owners = recommendations.loc[:, ["recommendation_id", s.CUSTOMER_ID]]
    rows = rows.merge(owners, on="recommendation_id", how="left")
    return pd.DataFrame(
        {
            s.CUSTOMER_ID: rows[s.CUSTOMER_ID],
            s.PRODUCT_ID: rows[s.PRODUCT_ID],
            s.TS: rows[s.TS],
            s.EVENT_TYPE: rows["event_type"].map(FEEDBACK_AS_EVENT),
            s.SESSION_ID: pd.Series([None] * len(rows), index=rows.index, dtype=object),
        }
    ).reset_index(drop=True)


def impressions(
    feedback: pd.DataFrame, recommendations: pd.DataFrame, items: pd.DataFrame
) -> pd.DataFrame:
    """One row per item reported shown, with its list and position (:data:`IMPRESSION_COLUMNS`).

    An impression without a product covers every item of its recommendation; one with a
    product covers that product's items (one per task listing it). Rows are ordered by
    ``ts``, recommendation, task and position.
    """
    shown = feedback.loc[
        feedback["event_type"] == IMPRESSION, ["recommendation_id", s.PRODUCT_ID, s.TS]
    ]
    shown = shown.rename(columns={s.PRODUCT_ID: "shown_product_id"})
    rows = shown.merge(recommendations.drop(columns=[s.TS]), on="recommendation_id")
    rows = rows.merge(items, on="recommendation_id")
    whole = rows["shown_product_id"].isna()
    rows = rows.loc[whole | (rows["shown_product_id"] == rows[s.PRODUCT_ID])]
    rows = rows.sort_values([s.TS, "recommendation_id", "task", "position"], kind="stable")
    out = rows.loc[:, list(IMPRESSION_COLUMNS)].reset_index(drop=True)
    return out.astype({"position": "int64", s.TS: "datetime64[ns]"})


def shop_cutoff(shop: Shop) -> pd.Timestamp | None:
    """The latest ``ts`` in the shop's purchases and events (None when both are empty)."""
    latest = [frame[s.TS].max() for frame in (shop.purchases, shop.events) if frame is not None]
    latest = [ts for ts in latest if not pd.isna(ts)]
    return max(latest) if latest else None


def _after(frame: pd.DataFrame, cutoff: pd.Timestamp | None) -> tuple[pd.DataFrame, int]:
    """Rows with ``ts > cutoff`` and how many were not."""
    if cutoff is None:
        return frame, 0
    later = frame[s.TS] > cutoff
    return frame.loc[later].reset_index(drop=True), int((~later).sum())


def _known(frame: pd.DataFrame, shop: Shop) -> tuple[pd.DataFrame, int]:
    """Rows naming a known customer and product, and how many did not."""
    known = frame[s.CUSTOMER_ID].isin(shop.customers[s.CUSTOMER_ID]) & frame[s.PRODUCT_ID].isin(
        shop.products[s.PRODUCT_ID]
    )
    return frame.loc[known].reset_index(drop=True), int((~known).sum())


@dataclass(frozen=True)
class LiveRows:
    """The store's rows to append to a shop, in the contract's shape.

    Attributes:
        purchases: ``purchases`` rows (:data:`PURCHASE_COLUMNS`).
        browsing: Live browsing events as ``events`` rows (:data:`EVENT_COLUMNS`).
        from_feedback: Feedback clicks and adds as ``events`` rows.
        skipped: Rows at or before the shop's cutoff.
        dropped: Reason -> rows after the cutoff left out.
    """

    purchases: pd.DataFrame
    browsing: pd.DataFrame
    from_feedback: pd.DataFrame
    skipped: int
    dropped: dict[str, int]


def live_rows(shop: Shop, live: dict[str, pd.DataFrame], cutoff: pd.Timestamp | None) -> LiveRows:
    """What of the store's frames (``EventStore.tables()``) to append to ``shop``.

    Rows at or before ``cutoff`` are skipped; of the later ones, purchases without an order or
    price, feedback for an unknown recommendation or without a product, and rows naming a
    customer or product the shop does not have are dropped (counted by reason).
    """
    purchases, skipped_purchases = _after(live_purchases(live["events"]), cutoff)
    complete = purchases[s.ORDER_ID].notna() & purchases[s.UNIT_PRICE].notna()
    purchases, unknown_purchases = _known(purchases.loc[complete], shop)

    browsing, skipped_browsing = _after(live_browsing(live["events"]), cutoff)
    browsing, unknown_browsing = _known(browsing, shop)

    from_feedback = feedback_browsing(live["feedback"], live["recommendations"])
    from_feedback, skipped_feedback = _after(from_feedback, cutoff)
    orphan = from_feedback[s.CUSTOMER_ID].isna()
    no_product = ~orphan & from_feedback[s.PRODUCT_ID].isna()
    from_feedback, unknown_feedback = _known(from_feedback.loc[~orphan & ~no_product], shop)
    dropped = {
        UNKNOWN_ID: unknown_purchases + unknown_browsing + unknown_feedback,
        INCOMPLETE_PURCHASE: int((~complete).sum()),
        UNKNOWN_RECOMMENDATION: int(orphan.sum()),
        NO_PRODUCT: int(no_product.sum()),
    }
    return LiveRows(
        purchases=purchases,
        browsing=browsing,
        from_feedback=from_feedback,
        skipped=skipped_purchases + skipped_browsing + skipped_feedback,
        dropped={reason: n for reason, n in dropped.items() if n},
    )


def _appended(base: pd.DataFrame | None, *extra: pd.DataFrame) -> pd.DataFrame | None:
    """``base`` with the non-empty ``extra`` frames appended (None: nothing at all)."""
    parts = [frame for frame in (base, *extra) if frame is not None and len(frame)]
    if not parts:
        return base
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


def _remove(folder: Path, table: str) -> None:
    """Remove ``table`` from ``folder`` in either format."""
    for suffix in (".parquet", ".csv"):
        (folder / f"{table}{suffix}").unlink(missing_ok=True)


def _write(frame: pd.DataFrame, folder: Path, table: str, fmt: ExportFormat) -> None:
    """Write one table, replacing any file of the same table in either format."""
    _remove(folder, table)
    path = folder / f"{table}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)


def export_to_contract(
    store: EventStore, data: Path, out: Path, *, fmt: ExportFormat = "parquet"
) -> ExportSummary:
    """Write the shop at ``data`` plus the store's live rows as a new shop folder ``out``.

    See the module docstring for what is appended and what is not. ``customers`` and
    ``products`` are copied byte for byte (in their own format); ``purchases`` and ``events``
    are written in ``fmt`` as the loader reads them (typed; exact duplicate lines and
    zero-quantity lines, which the loader drops anyway, are gone) with the live rows appended
    and sorted by time. Existing files of these tables in ``out`` are replaced.

    Args:
        store: The live store.
        data: The shop folder the store's live traffic continues (must load).
        out: The folder to write (created; must not be ``data``).
        fmt: ``"parquet"`` or ``"csv"`` for ``purchases`` and ``events``.

    Returns:
        The counts of rows appended, skipped and dropped.

    Raises:
        ValueError: ``out`` is ``data`` or ``fmt`` is unknown.
        DataValidationError: The shop at ``data`` breaks the contract.
        StoreError: The store cannot be read.
    """
    data, out = Path(data), Path(out)
    if fmt not in ("parquet", "csv"):
        raise ValueError(f"fmt must be 'parquet' or 'csv', got {fmt!r}")
    if out.resolve() == data.resolve():
        raise ValueError(f"out must be a new folder, not the shop folder itself ({data})")
    shop = load_shop(data)
    live = store.tables()
    cutoff = shop_cutoff(shop)
    rows = live_rows(shop, live, cutoff)

    out.mkdir(parents=True, exist_ok=True)
    for table in (s.CUSTOMERS, s.PRODUCTS):
        source = table_path(data, table)
        assert source is not None  # load_shop read it
        _remove(out, table)
        shutil.copyfile(source, out / source.name)
    purchases = _appended(shop.purchases, rows.purchases)
    assert purchases is not None  # the shop's purchases are a table, possibly empty
    order = [s.TS, s.ORDER_ID, s.PRODUCT_ID]
    _write(purchases.sort_values(order, kind="stable"), out, s.PURCHASES, fmt)
    events = _appended(shop.events, rows.browsing, rows.from_feedback)
    if events is None:
        _remove(out, s.EVENTS)
    else:
        _write(events.sort_values([s.TS, s.CUSTOMER_ID], kind="stable"), out, s.EVENTS, fmt)
    shown = impressions(live["feedback"], live["recommendations"], live["recommendation_items"])
    (out / FEEDBACK_DIR).mkdir(exist_ok=True)
    shown.to_parquet(out / FEEDBACK_DIR / IMPRESSIONS_FILE, index=False)

    summary = ExportSummary(
        out=out,
        cutoff=cutoff,
        purchases_added=len(rows.purchases),
        events_added=len(rows.browsing),
        feedback_events_added=len(rows.from_feedback),
        skipped_before_cutoff=rows.skipped,
        dropped=rows.dropped,
        impressions=len(shown),
    )
    for line in summary.lines():
        log.info("export: %s", line)
    return summary
