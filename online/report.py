"""The A/B experiment report: per-variant, per-task metrics with 95% intervals and tests.

Pure computation on the event store's frames (``EventStore.tables()``: ``events``,
``recommendations``, ``recommendation_items``, ``feedback``), so it runs on hand-made frames
without a store. :func:`experiment_report` builds an :class:`ExperimentReport`,
:func:`render` prints it as a fixed-width table and :func:`report_figure` draws it.

Definitions (the contract):

* An **item** is one (recommendation, task, product) of a served list. It is **impressed** when
  an impression feedback names it, or names its recommendation with ``product_id`` None (the
  whole answer). A click on an item counts as impressing it too: the shop may skip impression
  calls, and a clicked item was seen. Impressions, clicks and conversions count each
  (recommendation, task, product) once, however many feedback rows repeat them; clicks and
  purchases that name no product are ignored.
* **CTR** = clicked impressed items / impressed items.
* An impressed item **converts** when the customer bought it within ``window`` after the
  recommendation's ``ts``: a purchase event (same customer and product, quantity > 0, event
  ``ts`` in ``(rec.ts, rec.ts + window]``) or a purchase feedback row on that recommendation and
  product (the shop's own attribution: no window). Each (recommendation, product) converts at
  most once; its revenue is ``unit_price × quantity`` of the earliest such purchase event, or of
  the earliest purchase feedback row when there is no event (a missing ``unit_price`` falls back
  to the price the item was recommended at). **Conversion** = converted / impressed items;
  **revenue per impression** = attributed revenue / impressed items (the mean over impressed
  items, 0 for one that did not convert).
* The ``any`` task pools the tasks over distinct (recommendation, product) pairs, so a product
  listed by two tasks of one answer counts once there (and once in each task's own row).
* **Attach rate** (per variant and task): of the orders (distinct ``order_id`` of purchase
  events) of customers exposed to the variant and placed within ``window`` after one of their
  impressed recommendations in that variant (so after their first impression there), the share
  holding a purchase line that converted an impressed item of that task in that variant. The
  ``any`` row counts an order holding a converted item of any task. A conversion known only
  from feedback has no order, so it never makes an order count.
* **Upgrade rate** (``upsell`` only): of the impressed upsell lists (recommendations with at
  least one impressed upsell item), the share of which at least one upsell item converted.
* **Average order value** (``aov``, per variant, task ``any``): the mean order total
  (``Σ unit_price × quantity`` of its purchase lines, a missing price counting 0) over the
  orders counted for the attach rate.
* A customer belongs to one variant (a stable split). A customer whose recommendations show
  two or more variants is counted under each, and the report warns with their number.

Statistics: 95% intervals are Wilson score intervals for proportions (CTR, conversion, attach,
upgrade) and Student-t intervals on the mean (``n - 1`` degrees of freedom; the one-sample form
of Welch's interval) for revenue per impression (one value per impressed item) and AOV (one
value per order). Each variant is compared with the **control** (default: the variant named
``champion`` if present, else the one with the most impressed items): a two-sided pooled
two-proportion z-test for proportions, Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``)
for means. A degenerate test (an empty side, or no variation at all) has p-value NaN.

Caveat: the tests treat items (and orders) as independent, but items shown to one customer are
not: a few heavy customers make the intervals too narrow and the p-values optimistic. Nor are
the p-values corrected for the many metrics, tasks and variants compared.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import stats

from online.records import CLICK, IMPRESSION, PURCHASE

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# --------------------------------------------------------------------------- store frames

EVENTS = "events"
RECOMMENDATIONS = "recommendations"
ITEMS = "recommendation_items"
FEEDBACK = "feedback"

RECOMMENDATION_ID = "recommendation_id"
CUSTOMER_ID = "customer_id"
PRODUCT_ID = "product_id"
EVENT_ID = "event_id"
EVENT_TYPE = "event_type"
ORDER_ID = "order_id"
TS = "ts"
UNIT_PRICE = "unit_price"
QUANTITY = "quantity"
PRICE = "price"
MODEL_VERSION = "model_version"

# The columns read from each frame (others are ignored).
READ_COLUMNS: Mapping[str, tuple[str, ...]] = {
    EVENTS: (EVENT_ID, EVENT_TYPE, CUSTOMER_ID, PRODUCT_ID, TS, ORDER_ID, UNIT_PRICE, QUANTITY),
    RECOMMENDATIONS: (RECOMMENDATION_ID, CUSTOMER_ID, "variant", MODEL_VERSION, TS),
    ITEMS: (RECOMMENDATION_ID, "task", PRODUCT_ID, PRICE),
    FEEDBACK: (RECOMMENDATION_ID, EVENT_TYPE, PRODUCT_ID, TS, QUANTITY, UNIT_PRICE),
}
_ID_COLUMNS = (EVENT_ID, RECOMMENDATION_ID, CUSTOMER_ID, PRODUCT_ID, ORDER_ID, "variant", "task")

# --------------------------------------------------------------------------- the report table

VARIANT = "variant"
TASK = "task"
METRIC = "metric"
VALUE = "value"
CI_LOW = "ci_low"
CI_HIGH = "ci_high"
N = "n"
DIFF = "diff_vs_control"
LIFT = "lift_vs_control"
P_VALUE = "p_value"
TABLE_COLUMNS: tuple[str, ...] = (
    VARIANT, TASK, METRIC, VALUE, CI_LOW, CI_HIGH, N, DIFF, LIFT, P_VALUE
)  # fmt: skip

ANY_TASK = "any"
UPSELL = "upsell"
TASK_ORDER: tuple[str, ...] = ("cross_sell", "upsell", "replenish")
DEFAULT_CONTROL = "champion"
DEFAULT_WINDOW = timedelta(days=1)
CONFIDENCE = 0.95
Z_95 = 1.959963984540054  # scipy.stats.norm.ppf(0.975)

Kind = Literal["proportion", "mean"]
Scope = Literal["tasks", "upsell", "any"]


@dataclass(frozen=True)
class Metric:
    """One metric of the report.

    Attributes:
        name: Column value in the table and part of the MLflow name (``cross_sell.ctr.champion``).
        label: Human title (figure panels).
        kind: ``proportion`` (Wilson interval, z-test) or ``mean`` (t interval, Welch's test).
        unit: What one observation is (``n`` counts them).
        scope: ``tasks``: every task and ``any``; ``upsell``: the upsell task only; ``any``:
            the pooled row only.
        fmt: Format spec of its values in :func:`render`.
    """

    name: str
    label: str
    kind: Kind
    unit: str
    scope: Scope
    fmt: str


METRICS: tuple[Metric, ...] = (
    Metric("ctr", "CTR", "proportion", "impressed item", "tasks", ".4f"),
    Metric("conversion", "conversion", "proportion", "impressed item", "tasks", ".4f"),
    Metric(
        "revenue_per_impression", "revenue per impression", "mean", "impressed item", "tasks", ".3f"
    ),
    Metric("attach_rate", "attach rate", "proportion", "order", "tasks", ".4f"),
    Metric("upgrade_rate", "upgrade rate (upsell)", "proportion", "upsell list", "upsell", ".4f"),
    Metric("aov", "average order value", "mean", "order", "any", ".2f"),
)
METRICS_BY_NAME: Mapping[str, Metric] = {m.name: m for m in METRICS}


class NoImpressionsError(ValueError):
    """The frames hold no impressed item: there is nothing to report."""


# --------------------------------------------------------------------------- statistics


def wilson_interval(successes: float, n: int, *, z: float = Z_95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n`` (NaNs when ``n == 0``).

    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = successes / n``.
    """
    if n <= 0:
        return math.nan, math.nan
    p = successes / n
    denominator = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, center - half), min(1.0, center + half)


def mean_interval(values: np.ndarray, *, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Student-t interval of the mean of ``values`` (NaNs with fewer than 2 values).

    ``mean ± t(1 - (1 - confidence)/2, n - 1) · s / sqrt(n)``, ``s`` the sample standard
    deviation (``ddof=1``).
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size < 2:
        return math.nan, math.nan
    mean = float(x.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, x.size - 1)) * float(x.std(ddof=1))
    half /= math.sqrt(x.size)
    return mean - half, mean + half


def two_proportion_p_value(x1: float, n1: int, x2: float, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z-test of ``x1/n1`` against ``x2/n2``.

    ``z = (p1 - p2) / sqrt(p(1-p)(1/n1 + 1/n2))`` with the pooled ``p = (x1+x2)/(n1+n2)``;
    NaN when a side is empty or the pooled proportion is 0 or 1 (nothing to test).
    """
    if n1 <= 0 or n2 <= 0:
        return math.nan
    pooled = (x1 + x2) / (n1 + n2)
    variance = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    if variance <= 0:
        return math.nan
    z = (x1 / n1 - x2 / n2) / math.sqrt(variance)
    return float(2 * stats.norm.sf(abs(z)))


def welch_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided p-value of Welch's t-test of ``mean(a) == mean(b)``.

    ``scipy.stats.ttest_ind(a, b, equal_var=False)``; NaN when a side has fewer than 2 values
    or neither side varies.
    """
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.size < 2 or y.size < 2 or (np.ptp(x) == 0 and np.ptp(y) == 0):
        return math.nan
    with warnings.catch_warnings():  # scipy's precision-loss notes on near-constant samples
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(stats.ttest_ind(x, y, equal_var=False).pvalue)


# --------------------------------------------------------------------------- the frames


def _frame(tables: Mapping[str, pd.DataFrame], name: str) -> pd.DataFrame:
    """The columns the report reads from table ``name``: ids as strings, ``ts`` parsed."""
    if name not in tables:
        raise ValueError(f"table {name!r} is missing (have {sorted(tables)})")
    frame = tables[name]
    columns = READ_COLUMNS[name]
    if missing := [c for c in columns if c not in frame.columns]:
        raise ValueError(f"table {name!r} lacks column(s) {missing}")
    out = frame.loc[:, list(columns)].copy().reset_index(drop=True)
    for column in columns:
        if column in _ID_COLUMNS:
            values = out[column]
            out[column] = values.astype(object).where(values.isna(), values.astype(str))
            out[column] = out[column].where(out[column].notna(), None)
    if TS in out.columns:
        out[TS] = pd.to_datetime(out[TS])
    for column in (UNIT_PRICE, QUANTITY, PRICE):
        if column in out.columns:
            out[column] = pd.to_numeric(out[column], errors="coerce").astype(np.float64)
    return out


def _has_pair(frame: pd.DataFrame, pairs: pd.DataFrame, on: Sequence[str]) -> np.ndarray:
    """Whether each row of ``frame`` has its ``on`` values among the rows of ``pairs``."""
    keys = pairs.loc[:, list(on)].drop_duplicates()
    hit = frame.loc[:, list(on)].merge(keys, on=list(on), how="left", indicator=True)
    return (hit["_merge"] == "both").to_numpy()


def _task_order(tasks: Iterable[str]) -> list[str]:
    """Known tasks in their usual order, then any others alphabetically."""
    present = set(tasks)
    return [t for t in TASK_ORDER if t in present] + sorted(present - set(TASK_ORDER))


def impressed_items(
    tables: Mapping[str, pd.DataFrame], *, window: timedelta = DEFAULT_WINDOW
) -> pd.DataFrame:
    """Every impressed item with its click and conversion (see the module's definitions).

    Args:
        tables: The store's frames (``EventStore.tables()``).
        window: How long after a recommendation a purchase event still converts its items.

    Returns:
        One row per impressed (recommendation, task, product): ``recommendation_id``, ``task``,
        ``product_id``, ``price``, ``customer_id``, ``variant``, ``ts`` (the recommendation's),
        ``clicked``, ``converted`` (bools), ``revenue`` (0 when not converted) and ``order_id``
        (the order of the converting purchase event; None without one).
    """
    recs = _frame(tables, RECOMMENDATIONS).drop_duplicates(RECOMMENDATION_ID)
    items = _frame(tables, ITEMS).drop_duplicates([RECOMMENDATION_ID, TASK, PRODUCT_ID])
    items = items.merge(
        recs.loc[:, [RECOMMENDATION_ID, CUSTOMER_ID, VARIANT, TS]], on=RECOMMENDATION_ID
    )
    feedback = _frame(tables, FEEDBACK)
    named = feedback[PRODUCT_ID].notna()
    impressions = feedback[feedback[EVENT_TYPE].eq(IMPRESSION)]
    clicks = feedback[feedback[EVENT_TYPE].eq(CLICK) & named]
    pair = [RECOMMENDATION_ID, PRODUCT_ID]
    whole = set(impressions.loc[impressions[PRODUCT_ID].isna(), RECOMMENDATION_ID])
    items["clicked"] = _has_pair(items, clicks, pair)
    items = items[
        items[RECOMMENDATION_ID].isin(whole)
        | _has_pair(items, impressions[impressions[PRODUCT_ID].notna()], pair)
        | items["clicked"]
    ].reset_index(drop=True)

    conversions = _conversions(
        items, _frame(tables, EVENTS), feedback[feedback[EVENT_TYPE].eq(PURCHASE) & named],
        window=window,
    )  # fmt: skip
    items = items.merge(conversions, on=pair, how="left")
    items["converted"] = items["converted"].fillna(False).astype(bool)
    items["revenue"] = items["revenue"].fillna(0.0).astype(np.float64)
    items[ORDER_ID] = items[ORDER_ID].astype(object).where(items[ORDER_ID].notna(), None)
    return items


def _conversions(
    items: pd.DataFrame, events: pd.DataFrame, purchases: pd.DataFrame, *, window: timedelta
) -> pd.DataFrame:
    """``recommendation_id, product_id, converted, revenue, order_id`` of the converted pairs."""
    pair = [RECOMMENDATION_ID, PRODUCT_ID]
    pairs = items.drop_duplicates(pair).loc[:, [*pair, CUSTOMER_ID, TS, PRICE]]

    bought = events[events[EVENT_TYPE].eq(PURCHASE) & events[QUANTITY].gt(0)]
    by_event = pairs.merge(
        bought.drop(columns=[EVENT_TYPE]), on=[CUSTOMER_ID, PRODUCT_ID], suffixes=("", "_event")
    )
    by_event = by_event[
        (by_event["ts_event"] > by_event[TS]) & (by_event["ts_event"] <= by_event[TS] + window)
    ]
    by_event = by_event.sort_values([*pair, "ts_event", EVENT_ID]).drop_duplicates(pair)
    by_event["revenue"] = by_event[UNIT_PRICE].fillna(by_event[PRICE]) * by_event[QUANTITY]

    by_feedback = pairs.merge(purchases.drop(columns=[EVENT_TYPE]), on=pair, suffixes=("", "_fb"))
    by_feedback = by_feedback.sort_values([*pair, "ts_fb"]).drop_duplicates(pair)
    by_feedback["revenue"] = by_feedback[UNIT_PRICE].fillna(by_feedback[PRICE]) * by_feedback[
        QUANTITY
    ].fillna(1.0)
    by_feedback = by_feedback[~_has_pair(by_feedback, by_event, pair)]

    out = pd.concat(
        [
            by_event.loc[:, [*pair, "revenue", ORDER_ID]],
            by_feedback.loc[:, [*pair, "revenue"]].assign(**{ORDER_ID: None}),
        ],
        ignore_index=True,
    )
    out["converted"] = True
    return out


def counted_orders(
    tables: Mapping[str, pd.DataFrame],
    items: pd.DataFrame,
    *,
    window: timedelta = DEFAULT_WINDOW,
) -> pd.DataFrame:
    """The orders the attach rate and AOV count, one row per (variant, order).

    Args:
        tables: The store's frames (purchase lines are read from ``events``).
        items: :func:`impressed_items` of the same frames and window.
        window: How long after an impressed recommendation an order still counts.

    Returns:
        ``variant``, ``order_id``, ``total`` (``Σ unit_price × quantity``) and one bool column
        per task present in ``items`` (the order holds a converted item of that task in that
        variant), plus ``any``.
    """
    events = _frame(tables, EVENTS)
    lines = events[events[EVENT_TYPE].eq(PURCHASE) & events[ORDER_ID].notna()].copy()
    lines["amount"] = lines[UNIT_PRICE].fillna(0.0) * lines[QUANTITY]
    orders = lines.groupby(ORDER_ID, as_index=False).agg(
        customer_id=(CUSTOMER_ID, "first"), order_ts=(TS, "min"), total=("amount", "sum")
    )
    shown = items.drop_duplicates(RECOMMENDATION_ID).loc[:, [CUSTOMER_ID, VARIANT, TS]]
    exposed = orders.merge(shown, on=CUSTOMER_ID)
    exposed = exposed[
        (exposed["order_ts"] > exposed[TS]) & (exposed["order_ts"] <= exposed[TS] + window)
    ]
    out = exposed.drop_duplicates([VARIANT, ORDER_ID]).loc[:, [VARIANT, ORDER_ID, "total"]]
    out = out.sort_values([VARIANT, ORDER_ID]).reset_index(drop=True)

    converted = items[items["converted"] & items[ORDER_ID].notna()]
    tasks = _task_order(items[TASK])
    for task in tasks:
        out[task] = _has_pair(out, converted[converted[TASK].eq(task)], [VARIANT, ORDER_ID])
    out[ANY_TASK] = out.loc[:, tasks].any(axis=1) if tasks else False
    return out


def observations(
    tables: Mapping[str, pd.DataFrame], *, window: timedelta = DEFAULT_WINDOW
) -> pd.DataFrame:
    """One value per observation of every metric: what the intervals and tests are run on.

    Returns:
        ``metric``, ``task``, ``variant``, ``value``: a 0/1 outcome for proportions, an amount
        for means (revenue of an impressed item, total of an order).
    """
    items = impressed_items(tables, window=window)
    tasks = _task_order(items[TASK])
    pairs = (
        items.groupby([RECOMMENDATION_ID, PRODUCT_ID], as_index=False)
        .agg(
            variant=(VARIANT, "first"),
            clicked=("clicked", "any"),
            converted=("converted", "any"),
            revenue=("revenue", "first"),
        )
        .assign(task=ANY_TASK)
    )
    parts: list[pd.DataFrame] = []
    for frame in (items, pairs):
        for metric, column in (
            ("ctr", "clicked"),
            ("conversion", "converted"),
            ("revenue_per_impression", "revenue"),
        ):
            parts.append(_values(frame, metric, column))

    upsell = items[items[TASK].eq(UPSELL)]
    if len(upsell):
        lists = upsell.groupby(RECOMMENDATION_ID, as_index=False).agg(
            variant=(VARIANT, "first"), converted=("converted", "any")
        )
        parts.append(_values(lists.assign(task=UPSELL), "upgrade_rate", "converted"))

    orders = counted_orders(tables, items, window=window)
    for task in [*tasks, ANY_TASK]:
        parts.append(_values(orders.assign(task=task, hit=orders[task]), "attach_rate", "hit"))
    parts.append(_values(orders.assign(task=ANY_TASK), "aov", "total"))
    return pd.concat(parts, ignore_index=True)


def _values(frame: pd.DataFrame, metric: str, column: str) -> pd.DataFrame:
    return pd.DataFrame(
        {
            METRIC: metric,
            TASK: frame[TASK].to_numpy(dtype=object),
            VARIANT: frame[VARIANT].to_numpy(dtype=object),
            VALUE: frame[column].to_numpy(dtype=np.float64),
        }
    )


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True, eq=False)
class ExperimentReport:
    """The A/B report: the tidy table and what it was computed with.

    Attributes:
        table: One row per (variant, task, metric) with the columns of :data:`TABLE_COLUMNS`;
            ``diff_vs_control``, ``lift_vs_control`` (relative) and ``p_value`` are NaN on the
            control's rows.
        control: The variant the others are compared with.
        variants: The variants with impressions, the control first.
        model_versions: Variant -> the model versions its recommendations name.
        window: The attribution window.
        warnings: Caveats found in the data (customers under two variants, ...).
        mixed_customers: Customers seen under two or more variants.
    """

    table: pd.DataFrame
    control: str
    variants: tuple[str, ...]
    model_versions: Mapping[str, tuple[str, ...]]
    window: timedelta
    warnings: tuple[str, ...] = ()
    mixed_customers: int = 0

    def rows(self, metric: str, task: str) -> pd.DataFrame:
        """The rows of ``metric`` for ``task``, one per variant (control first).

        Raises:
            ValueError: The report has no such metric and task.
        """
        rows = self.table[self.table[METRIC].eq(metric) & self.table[TASK].eq(task)]
        if rows.empty:
            have = sorted(set(zip(self.table[METRIC], self.table[TASK], strict=True)))
            raise ValueError(f"no {metric!r} for task {task!r} in the report (have {have})")
        return rows

    def value(self, metric: str, task: str, variant: str) -> float:
        """The value of ``metric`` for ``task`` and ``variant``."""
        rows = self.rows(metric, task)
        row = rows[rows[VARIANT].eq(variant)]
        if row.empty:
            raise ValueError(f"no variant {variant!r} in the report (have {list(self.variants)})")
        return float(row[VALUE].iloc[0])

    def verdict(
        self, metric: str = "revenue_per_impression", task: str = ANY_TASK, alpha: float = 0.05
    ) -> str | None:
        """The winning variant on ``metric`` for ``task``, or None when nothing is significant.

        Higher is better for every metric. A challenger wins when it beats the control with
        ``p_value < alpha`` (the best such challenger if several; challengers are not tested
        against each other); the control wins when it beats every challenger so. No correction
        for multiple comparisons is made.

        Raises:
            ValueError: ``alpha`` not in (0, 1), or no such metric and task.
        """
        if not 0 < alpha < 1:
            raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
        rows = self.rows(metric, task)
        challengers = rows[rows[VARIANT].ne(self.control)]
        significant = challengers[P_VALUE].lt(alpha)  # NaN compares False
        better = challengers[significant & challengers[DIFF].gt(0)]
        if len(better):
            return str(better.sort_values(VALUE, ascending=False)[VARIANT].iloc[0])
        if len(challengers) and bool((significant & challengers[DIFF].lt(0)).all()):
            return self.control
        return None


def experiment_report(
    tables: Mapping[str, pd.DataFrame],
    *,
    control: str | None = None,
    window: timedelta = DEFAULT_WINDOW,
) -> ExperimentReport:
    """The A/B report of the store's frames (the module docstring defines every metric).

    Args:
        tables: ``EventStore.tables()``: ``events``, ``recommendations``,
            ``recommendation_items`` and ``feedback``.
        control: The variant to compare with; default ``champion`` if present, else the variant
            with the most impressed items.
        window: How long after a recommendation a purchase is attributed to it.

    Returns:
        The report.

    Raises:
        NoImpressionsError: No recommended item was impressed.
        ValueError: A table or column is missing, ``window`` is not positive, or ``control``
            is not a variant with impressions.
    """
    if window <= timedelta(0):
        raise ValueError(f"window must be positive, got {window}")
    recs = _frame(tables, RECOMMENDATIONS).drop_duplicates(RECOMMENDATION_ID)
    obs = observations(tables, window=window)
    impressions = obs[obs[METRIC].eq("ctr") & obs[TASK].eq(ANY_TASK)][VARIANT].value_counts()
    if impressions.empty:
        raise NoImpressionsError(
            f"no impressions: nothing to report ({len(recs)} recommendation(s), 0 impressed items)"
        )

    notes: list[str] = []
    if silent := sorted(set(recs[VARIANT].dropna()) - set(impressions.index)):
        notes.append(f"variant(s) with recommendations but no impressions, left out: {silent}")
    if control is None:
        control = (
            DEFAULT_CONTROL
            if DEFAULT_CONTROL in impressions.index
            else str(impressions.sort_index().idxmax())
        )
    elif control not in impressions.index:
        raise ValueError(
            f"control {control!r} is not a variant with impressions "
            f"(have {sorted(impressions.index)})"
        )
    variants = (control, *sorted(v for v in impressions.index if v != control))

    per_customer = recs.groupby(CUSTOMER_ID)[VARIANT].nunique()
    mixed = int(per_customer.gt(1).sum())
    if mixed:
        notes.append(
            f"{mixed} customer(s) seen under two or more variants: counted under each "
            "(the split should be stable)"
        )
    versions = {
        v: tuple(sorted(recs.loc[recs[VARIANT].eq(v), MODEL_VERSION].dropna().unique()))
        for v in variants
    }
    notes += [
        f"variant {v!r} served {len(vs)} model versions: {list(vs)}"
        for v, vs in versions.items()
        if len(vs) > 1
    ]
    tasks = _task_order(obs.loc[obs[TASK].ne(ANY_TASK), TASK])
    table = _table(obs, variants=variants, tasks=tasks)
    return ExperimentReport(
        table=table,
        control=control,
        variants=variants,
        model_versions=versions,
        window=window,
        warnings=tuple(notes),
        mixed_customers=mixed,
    )


def _scope_tasks(metric: Metric, tasks: Sequence[str]) -> list[str]:
    if metric.scope == "tasks":
        return [*tasks, ANY_TASK]
    if metric.scope == "upsell":
        return [UPSELL] if UPSELL in tasks else []
    return [ANY_TASK]


def _table(obs: pd.DataFrame, *, variants: Sequence[str], tasks: Sequence[str]) -> pd.DataFrame:
    """Values, intervals and the comparisons with the control (``variants[0]``)."""
    groups: dict[tuple[str, str, str], np.ndarray] = {
        (str(m), str(t), str(v)): g.to_numpy(np.float64)
        for (m, t, v), g in obs.groupby([METRIC, TASK, VARIANT])[VALUE]
    }
    empty = np.zeros(0)
    rows: list[dict[str, object]] = []
    for metric in METRICS:
        for task in _scope_tasks(metric, tasks):
            control = groups.get((metric.name, task, variants[0]), empty)
            for variant in variants:
                values = groups.get((metric.name, task, variant), empty)
                rows.append(
                    {VARIANT: variant, TASK: task, METRIC: metric.name}
                    | _summary(metric, values, control, is_control=variant == variants[0])
                )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


def _summary(
    metric: Metric, values: np.ndarray, control: np.ndarray, *, is_control: bool
) -> dict[str, object]:
    n = int(values.size)
    value = float(values.mean()) if n else math.nan
    if metric.kind == "proportion":
        low, high = wilson_interval(float(values.sum()), n)
    else:
        low, high = mean_interval(values)
    diff = lift = p_value = math.nan
    if not is_control:
        reference = float(control.mean()) if control.size else math.nan
        diff = value - reference
        lift = diff / reference if reference and math.isfinite(reference) else math.nan
        if metric.kind == "proportion":
            p_value = two_proportion_p_value(
                float(values.sum()), n, float(control.sum()), int(control.size)
            )
        else:
            p_value = welch_p_value(values, control)
    return {
        VALUE: value, CI_LOW: low, CI_HIGH: high, N: n, DIFF: diff, LIFT: lift, P_VALUE: p_value
    }  # fmt: skip


# --------------------------------------------------------------------------- text and figure


def format_window(window: timedelta) -> str:
    """``1 day``, ``36 h`` or ``90 min``: the window as the report prints it."""
    seconds = window.total_seconds()
    if seconds % 86400 == 0:
        days = int(seconds // 86400)
        return f"{days} day" + ("s" if days != 1 else "")
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)} h"
    return f"{seconds / 60:g} min"


def verdict_line(
    report: ExperimentReport,
    metric: str = "revenue_per_impression",
    task: str = ANY_TASK,
    alpha: float = 0.05,
) -> str:
    """One sentence: the verdict on ``metric`` for ``task``, with its lift and p-value."""
    winner = report.verdict(metric, task, alpha)
    head = f"verdict ({metric}, {task}, alpha {alpha:g}):"
    if winner is None:
        return f"{head} no significant difference"
    rows = report.rows(metric, task)
    if winner == report.control:
        worst = rows[rows[VARIANT].ne(report.control)][P_VALUE].max()
        return f"{head} {winner} (control) beats every challenger (p <= {worst:.3g})"
    row = rows[rows[VARIANT].eq(winner)].iloc[0]
    return (
        f"{head} {winner} beats {report.control} by {row[LIFT]:+.1%} "
        f"({row[DIFF]:+.4g}, p = {row[P_VALUE]:.3g})"
    )


def _cell(value: float, fmt: str) -> str:
    return "" if not math.isfinite(value) else format(value, fmt)


def render(report: ExperimentReport) -> str:
    """The report as fixed-width text: header, variants with model versions, warnings, table."""
    width = max(len("variant"), *(len(v) for v in report.variants))
    lines = [
        f"A/B report: {len(report.variants)} variant(s), control {report.control}, "
        f"attribution window {format_window(report.window)}, 95% intervals",
    ]
    for variant in report.variants:
        versions = ", ".join(report.model_versions.get(variant, ())) or "unknown"
        lines.append(f"  {variant:<{width}}  model {versions}")
    lines += [f"warning: {note}" for note in report.warnings]
    header = (
        f"{'metric':<22} {'task':<10} {'variant':<{width}} {'value':>10} "
        f"{'95% CI':>21} {'n':>7} {'diff':>10} {'lift':>8} {'p':>8}"
    )
    lines += ["", header, "-" * len(header)]
    for metric in METRICS:
        rows = report.table[report.table[METRIC].eq(metric.name)]
        for row in rows.itertuples(index=False):
            low, high = float(getattr(row, CI_LOW)), float(getattr(row, CI_HIGH))
            interval = (
                f"[{_cell(low, metric.fmt)}, {_cell(high, metric.fmt)}]"
                if math.isfinite(low) and math.isfinite(high)
                else ""
            )
            lift = float(getattr(row, LIFT))
            lines.append(
                f"{metric.name:<22} {getattr(row, TASK):<10} {getattr(row, VARIANT):<{width}} "
                f"{_cell(float(getattr(row, VALUE)), metric.fmt):>10} {interval:>21} "
                f"{int(getattr(row, N)):>7} {_cell(float(getattr(row, DIFF)), '+' + metric.fmt):>10} "
                f"{'' if not math.isfinite(lift) else f'{lift:+.1%}':>8} "
                f"{_cell(float(getattr(row, P_VALUE)), '.4f'):>8}".rstrip()
            )
    return "\n".join(lines)


def report_figure(report: ExperimentReport) -> Figure:
    """One panel per metric: a bar per variant and task with its 95% interval as whiskers.

    Built on :class:`matplotlib.figure.Figure` directly (no pyplot, no backend switch).
    """
    from matplotlib.figure import Figure

    metrics = [m for m in METRICS if report.table[METRIC].eq(m.name).any()]
    ncols = min(3, max(1, len(metrics)))
    nrows = math.ceil(len(metrics) / ncols) or 1
    fig = Figure(figsize=(5.0 * ncols, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    width = 0.8 / len(report.variants)
    for ax, metric in zip(axes.flat, metrics, strict=False):
        rows = report.table[report.table[METRIC].eq(metric.name)]
        tasks = list(dict.fromkeys(rows[TASK]))
        for i, variant in enumerate(report.variants):
            mine = rows[rows[VARIANT].eq(variant)].set_index(TASK).reindex(tasks)
            values = mine[VALUE].to_numpy(np.float64)
            below = np.clip(np.nan_to_num(values - mine[CI_LOW].to_numpy(np.float64)), 0, None)
            above = np.clip(np.nan_to_num(mine[CI_HIGH].to_numpy(np.float64) - values), 0, None)
            x = np.arange(len(tasks)) + (i - (len(report.variants) - 1) / 2) * width
            ax.bar(
                x,
                np.nan_to_num(values),
                width,
                yerr=np.vstack([below, above]),
                capsize=3,
                color=f"C{i}",
                label=variant,
            )
        ax.set_xticks(np.arange(len(tasks)), tasks)
        ax.set_xlim(-0.75, len(tasks) - 0.25)
        ax.set_title(metric.label)
        ax.set_ylabel(f"per {metric.unit}" if metric.kind == "mean" else "share")
    for ax in axes.flat[len(metrics) :]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside upper right", title="variant")
    fig.suptitle(
        f"A/B report vs {report.control} (window {format_window(report.window)}, 95% intervals)"
    )
    return fig
