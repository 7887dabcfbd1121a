"""The A/B experiment report on hand-made store frames: every metric pinned by hand arithmetic,
the intervals and tests against hand computations and scipy, the warnings and the verdict.

The fixture (window 1 day; champion: customers c1, c2; challenger: c3, c4)::

    r1 c1 champion   03-01 10:00  cross_sell p1 (10), p2 (20); upsell p3 (100)
    r2 c2 champion   03-01 12:00  cross_sell p1 (10), p4 (5);  upsell p5 (200)
    r3 c3 challenger 03-01 10:00  cross_sell p1 (10), p2 (20); upsell p3 (100); replenish p6 (8)
    r4 c4 challenger 03-02 09:00  cross_sell p4 (5);            upsell p5 (200)

Feedback: r1 impression of the whole list (product None) and a click on p1; r2 impressions of
p1 (twice) and p5 (p4 is never shown); r3 impressions of p1, p2, p3, p6, clicks on p2 and p3
and a purchase of p3 (1 x 95) known only from feedback; r4 a click on p4 with no impression
call (p5 never shown).

Purchase events (order: lines, total):

    o0 c3 03-01 09:00  p3 1 x 100                 before r3: no conversion, order not counted
    o1 c1 03-01 15:00  p1 2 x 9.5, p9 1 x 30      converts r1 p1 (19); total 49
    o6 c1 03-02 11:00  p3 1 x 100                 1 h after r1's window: neither
    o2 c1 03-03 10:00  p2 1 x 20                  outside r1's window: neither
    o3 c2 03-01 13:00  p5 1 x 190, p4 1 x 5       converts r2 p5 (190), p4 was not shown; 195
    o4 c3 03-01 11:00  p2 1 x 20, p6 3 x 8        converts r3 p2 (20) and p6 (24); total 44
    o5 c4 03-02 20:00  p7 1 x 12                  counted (11 h after r4), converts nothing; 12
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from online.report import (
    ANY_TASK,
    METRICS,
    TABLE_COLUMNS,
    ExperimentReport,
    NoImpressionsError,
    counted_orders,
    experiment_report,
    impressed_items,
    mean_interval,
    render,
    report_figure,
    two_proportion_p_value,
    verdict_line,
    welch_p_value,
    wilson_interval,
)

CHAMPION = "champion"
CHALLENGER = "challenger"
DAY = timedelta(days=1)


def ts(text: str) -> datetime:
    return datetime.fromisoformat(f"2024-{text}")


RECS = [
    ("r1", "c1", CHAMPION, "xsell-ranker/3", "03-01 10:00"),
    ("r2", "c2", CHAMPION, "xsell-ranker/3", "03-01 12:00"),
    ("r3", "c3", CHALLENGER, "xsell-ranker/4", "03-01 10:00"),
    ("r4", "c4", CHALLENGER, "xsell-ranker/4", "03-02 09:00"),
]
ITEMS = [  # recommendation, task, position, product, price
    ("r1", "cross_sell", 1, "p1", 10.0),
    ("r1", "cross_sell", 2, "p2", 20.0),
    ("r1", "upsell", 1, "p3", 100.0),
    ("r2", "cross_sell", 1, "p1", 10.0),
    ("r2", "cross_sell", 2, "p4", 5.0),
    ("r2", "upsell", 1, "p5", 200.0),
    ("r3", "cross_sell", 1, "p1", 10.0),
    ("r3", "cross_sell", 2, "p2", 20.0),
    ("r3", "upsell", 1, "p3", 100.0),
    ("r3", "replenish", 1, "p6", 8.0),
    ("r4", "cross_sell", 1, "p4", 5.0),
    ("r4", "upsell", 1, "p5", 200.0),
]
FEEDBACK = [  # recommendation, type, product, ts, quantity, unit price
    ("r1", "impression", None, "03-01 10:00", 1.0, None),
    ("r1", "click", "p1", "03-01 10:05", 1.0, None),
    ("r2", "impression", "p1", "03-01 12:00", 1.0, None),
    ("r2", "impression", "p1", "03-01 12:01", 1.0, None),
    ("r2", "impression", "p5", "03-01 12:00", 1.0, None),
    ("r3", "impression", "p1", "03-01 10:00", 1.0, None),
    ("r3", "impression", "p2", "03-01 10:00", 1.0, None),
    ("r3", "impression", "p3", "03-01 10:00", 1.0, None),
    ("r3", "impression", "p6", "03-01 10:00", 1.0, None),
    ("r3", "click", "p2", "03-01 10:02", 1.0, None),
    ("r3", "click", "p3", "03-01 10:03", 1.0, None),
    ("r3", "purchase", "p3", "03-01 10:30", 1.0, 95.0),
    ("r4", "click", "p4", "03-02 09:01", 1.0, None),
]
EVENTS = [  # customer, product, ts, order, unit price, quantity
    ("c3", "p3", "03-01 09:00", "o0", 100.0, 1.0),
    ("c1", "p1", "03-01 15:00", "o1", 9.5, 2.0),
    ("c1", "p9", "03-01 15:00", "o1", 30.0, 1.0),
    ("c1", "p3", "03-02 11:00", "o6", 100.0, 1.0),
    ("c1", "p2", "03-03 10:00", "o2", 20.0, 1.0),
    ("c2", "p5", "03-01 13:00", "o3", 190.0, 1.0),
    ("c2", "p4", "03-01 13:00", "o3", 5.0, 1.0),
    ("c3", "p2", "03-01 11:00", "o4", 20.0, 1.0),
    ("c3", "p6", "03-01 11:00", "o4", 8.0, 3.0),
    ("c4", "p7", "03-02 20:00", "o5", 12.0, 1.0),
]


def make_tables(
    recs: list[tuple[str, str, str, str, str]] = RECS,
    items: list[tuple[str, str, int, str, float]] = ITEMS,
    feedback: list[tuple[str, str, str | None, str, float, float | None]] = FEEDBACK,
    events: list[tuple[str, str, str, str, float, float]] = EVENTS,
) -> dict[str, pd.DataFrame]:
    """The four store frames, columns as ``EventStore.tables()`` returns them."""
    return {
        "events": pd.DataFrame(
            {
                "event_id": [f"e{i}" for i in range(len(events))],
                "event_type": "purchase",
                "customer_id": [e[0] for e in events],
                "product_id": [e[1] for e in events],
                "ts": [ts(e[2]) for e in events],
                "order_id": [e[3] for e in events],
                "unit_price": [e[4] for e in events],
                "quantity": [e[5] for e in events],
                "session_id": None,
                "recommendation_id": None,
                "received_at": ts("03-05 00:00"),
            }
        ),
        "recommendations": pd.DataFrame(
            {
                "recommendation_id": [r[0] for r in recs],
                "customer_id": [r[1] for r in recs],
                "placement": "cart",
                "variant": [r[2] for r in recs],
                "model_version": [r[3] for r in recs],
                "ts": [ts(r[4]) for r in recs],
            }
        ),
        "recommendation_items": pd.DataFrame(
            items, columns=["recommendation_id", "task", "position", "product_id", "price"]
        ).assign(score=0.5),
        "feedback": pd.DataFrame(
            {
                "feedback_id": [f"f{i}" for i in range(len(feedback))],
                "recommendation_id": [f[0] for f in feedback],
                "event_type": [f[1] for f in feedback],
                "product_id": [f[2] for f in feedback],
                "ts": [ts(f[3]) for f in feedback],
                "quantity": [f[4] for f in feedback],
                "unit_price": [f[5] for f in feedback],
                "received_at": ts("03-05 00:00"),
            }
        ),
    }


@pytest.fixture(scope="module")
def report() -> ExperimentReport:
    return experiment_report(make_tables(), control=None, window=DAY)


def row(report: ExperimentReport, metric: str, task: str, variant: str) -> pd.Series:
    rows = report.rows(metric, task)
    return rows[rows["variant"] == variant].iloc[0]


# (metric, task, variant) -> (value, n), by hand from the fixture.
# Impressed items. champion: cross_sell r1p1 r1p2 (whole list) r2p1 (named; p4 never shown) = 3;
#   upsell r1p3 r2p5 = 2; any = 5 distinct (recommendation, product) pairs.
# challenger: cross_sell r3p1 r3p2 r4p4 (click without impression) = 3; upsell r3p3 = 1
#   (r4p5 never shown); replenish r3p6 = 1; any = 5.
EXPECTED: dict[tuple[str, str, str], tuple[float, int]] = {
    # CTR: champion clicks r1p1 only; challenger clicks r3p2, r3p3, r4p4.
    ("ctr", "cross_sell", CHAMPION): (1 / 3, 3),
    ("ctr", "upsell", CHAMPION): (0 / 2, 2),
    ("ctr", "any", CHAMPION): (1 / 5, 5),
    ("ctr", "cross_sell", CHALLENGER): (2 / 3, 3),  # r3p2, r4p4
    ("ctr", "upsell", CHALLENGER): (1 / 1, 1),
    ("ctr", "replenish", CHALLENGER): (0 / 1, 1),
    ("ctr", "any", CHALLENGER): (3 / 5, 5),
    # Conversion: champion r1p1 (o1, in window), r2p5 (o3); r1p2 (o2) and r1p3 (o6) are late.
    # challenger r3p2 (o4), r3p6 (o4), r3p3 (feedback only; o0 is before r3); r4p4 not bought.
    ("conversion", "cross_sell", CHAMPION): (1 / 3, 3),
    ("conversion", "upsell", CHAMPION): (1 / 2, 2),
    ("conversion", "any", CHAMPION): (2 / 5, 5),
    ("conversion", "cross_sell", CHALLENGER): (1 / 3, 3),
    ("conversion", "upsell", CHALLENGER): (1 / 1, 1),
    ("conversion", "replenish", CHALLENGER): (1 / 1, 1),
    ("conversion", "any", CHALLENGER): (3 / 5, 5),
    # Revenue per impression: champion [19 (2 x 9.5), 0, 0] / 3; [0, 190] / 2; 209 / 5.
    # challenger [0, 20, 0] / 3; [95 (feedback)] / 1; [24 (3 x 8)] / 1; (20 + 95 + 24) / 5.
    ("revenue_per_impression", "cross_sell", CHAMPION): (19 / 3, 3),
    ("revenue_per_impression", "upsell", CHAMPION): (190 / 2, 2),
    ("revenue_per_impression", "any", CHAMPION): (209 / 5, 5),
    ("revenue_per_impression", "cross_sell", CHALLENGER): (20 / 3, 3),
    ("revenue_per_impression", "upsell", CHALLENGER): (95.0, 1),
    ("revenue_per_impression", "replenish", CHALLENGER): (24.0, 1),
    ("revenue_per_impression", "any", CHALLENGER): (139 / 5, 5),
    # Attach rate. Counted orders: champion o1 (cross_sell p1), o3 (upsell p5); o2, o6 are
    # outside r1's window. challenger o4 (cross_sell p2, replenish p6), o5 (nothing); o0 is
    # before r3; r3p3 converted by feedback only, so no order holds an upsell item.
    ("attach_rate", "cross_sell", CHAMPION): (1 / 2, 2),
    ("attach_rate", "upsell", CHAMPION): (1 / 2, 2),
    ("attach_rate", "replenish", CHAMPION): (0 / 2, 2),
    ("attach_rate", "any", CHAMPION): (2 / 2, 2),
    ("attach_rate", "cross_sell", CHALLENGER): (1 / 2, 2),
    ("attach_rate", "upsell", CHALLENGER): (0 / 2, 2),
    ("attach_rate", "replenish", CHALLENGER): (1 / 2, 2),
    ("attach_rate", "any", CHALLENGER): (1 / 2, 2),
    # Upgrade rate: champion lists r1 (p3 not bought), r2 (p5 bought) = 1/2; challenger r3 = 1/1
    # (r4's upsell item was never shown: not a list).
    ("upgrade_rate", "upsell", CHAMPION): (1 / 2, 2),
    ("upgrade_rate", "upsell", CHALLENGER): (1 / 1, 1),
    # AOV: champion (49 + 195) / 2; challenger (44 + 12) / 2.
    ("aov", "any", CHAMPION): (122.0, 2),
    ("aov", "any", CHALLENGER): (28.0, 2),
}


@pytest.mark.parametrize(("metric", "task", "variant"), sorted(EXPECTED))
def test_metric_values_by_hand(
    report: ExperimentReport, metric: str, task: str, variant: str
) -> None:
    value, n = EXPECTED[(metric, task, variant)]
    got = row(report, metric, task, variant)
    assert got["value"] == pytest.approx(value)
    assert got["n"] == n


def test_table_shape_and_empty_cells(report: ExperimentReport) -> None:
    assert tuple(report.table.columns) == TABLE_COLUMNS
    assert report.control == CHAMPION  # named "champion"
    assert report.variants == (CHAMPION, CHALLENGER)
    assert report.window == DAY
    assert report.warnings == ()
    assert report.model_versions == {
        CHAMPION: ("xsell-ranker/3",),
        CHALLENGER: ("xsell-ranker/4",),
    }
    # Every (metric, task, variant) is a row; the champion never served replenish: n = 0, NaN.
    keys = set(
        zip(report.table["metric"], report.table["task"], report.table["variant"], strict=True)
    )
    assert set(EXPECTED) <= keys
    assert len(keys) == len(report.table) == len(EXPECTED) + 3  # champion replenish x 3
    empty = row(report, "ctr", "replenish", CHAMPION)
    assert empty["n"] == 0
    assert math.isnan(empty["value"]) and math.isnan(empty["ci_low"])
    assert math.isnan(row(report, "ctr", "replenish", CHALLENGER)["p_value"])
    # The control's own rows carry no comparison.
    control = report.table[report.table["variant"] == CHAMPION]
    assert control[["diff_vs_control", "lift_vs_control", "p_value"]].isna().all().all()


def test_diff_and_lift_vs_control(report: ExperimentReport) -> None:
    ctr = row(report, "ctr", ANY_TASK, CHALLENGER)
    assert ctr["diff_vs_control"] == pytest.approx(3 / 5 - 1 / 5)
    assert ctr["lift_vs_control"] == pytest.approx((3 / 5 - 1 / 5) / (1 / 5))  # +200%
    aov = row(report, "aov", ANY_TASK, CHALLENGER)
    assert aov["diff_vs_control"] == pytest.approx(28 - 122)
    assert aov["lift_vs_control"] == pytest.approx(-94 / 122)


def test_wilson_interval_by_hand() -> None:
    # 1 success in 3, z = 1.959964, z^2 = 3.841459:
    # center = (1/3 + 3.841459/6) / (1 + 3.841459/3) = 0.973577 / 2.280486 = 0.426917
    # half = 1.959964 * sqrt((1/3)(2/3)/3 + 3.841459/36) / 2.280486
    #      = 1.959964 * sqrt(0.074074 + 0.106707) / 2.280486 = 0.365425
    low, high = wilson_interval(1, 3)
    assert low == pytest.approx(0.426917 - 0.365425, abs=2e-6)  # 0.061492
    assert high == pytest.approx(0.426917 + 0.365425, abs=2e-6)  # 0.792342
    # 0 in 2: center = (0 + 3.841459/4) / (1 + 3.841459/2) = 0.960365 / 2.920730 = 0.328810
    # half = 1.959964 * sqrt(0 + 3.841459/16) / 2.920730 = 1.959964 * 0.490000 / 2.920730
    low, high = wilson_interval(0, 2)
    assert low == pytest.approx(0.0, abs=1e-9)
    assert high == pytest.approx(2 * 0.328810, abs=2e-6)  # 0.657620
    assert all(math.isnan(b) for b in wilson_interval(0, 0))


def test_report_uses_wilson_and_t_intervals(report: ExperimentReport) -> None:
    ctr = row(report, "ctr", "cross_sell", CHAMPION)  # 1 / 3
    assert (ctr["ci_low"], ctr["ci_high"]) == pytest.approx((0.061492, 0.792342), abs=2e-6)
    # AOV champion: orders 49 and 195, mean 122, s = sqrt(2 * 73^2) = 103.2376,
    # t(0.975, 1) = 12.7062: half = 12.7062 * 103.2376 / sqrt(2) = 927.55
    aov = row(report, "aov", ANY_TASK, CHAMPION)
    half = stats.t.ppf(0.975, 1) * np.std([49.0, 195.0], ddof=1) / math.sqrt(2)
    assert half == pytest.approx(927.55, abs=0.01)
    assert (aov["ci_low"], aov["ci_high"]) == pytest.approx((122 - half, 122 + half))
    # A single value has no interval.
    assert math.isnan(row(report, "revenue_per_impression", "upsell", CHALLENGER)["ci_low"])
    low, high = mean_interval(np.array([1.0, 2.0, 3.0]))  # mean 2, s = 1, t(0.975, 2) = 4.302653
    assert (low, high) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)))


def test_z_test_p_value(report: ExperimentReport) -> None:
    # CTR any: challenger 3/5 vs champion 1/5. Pooled p = 4/10 = 0.4,
    # se = sqrt(0.4 * 0.6 * (1/5 + 1/5)) = sqrt(0.096) = 0.309839, z = 0.4 / 0.309839 = 1.290994
    z = (3 / 5 - 1 / 5) / math.sqrt(0.4 * 0.6 * (1 / 5 + 1 / 5))
    assert z == pytest.approx(1.290994, abs=1e-6)
    expected = 2 * stats.norm.sf(z)
    assert expected == pytest.approx(0.196706, abs=1e-6)
    assert two_proportion_p_value(3, 5, 1, 5) == pytest.approx(expected)
    assert row(report, "ctr", ANY_TASK, CHALLENGER)["p_value"] == pytest.approx(expected)
    # A known value: 50/100 vs 40/100 -> z = 0.1 / sqrt(0.45 * 0.55 * 0.02) = 1.421338, p = 0.155218
    assert two_proportion_p_value(50, 100, 40, 100) == pytest.approx(0.155218, abs=1e-6)
    # Nothing to test: all-zero on both sides, or an empty side.
    assert math.isnan(two_proportion_p_value(0, 5, 0, 7))
    assert math.isnan(two_proportion_p_value(1, 5, 0, 0))


def test_welch_p_value_matches_scipy(report: ExperimentReport) -> None:
    challenger = [0.0, 20.0, 95.0, 24.0, 0.0]  # revenue of the impressed pairs, by hand
    champion = [19.0, 0.0, 0.0, 0.0, 190.0]
    expected = stats.ttest_ind(challenger, champion, equal_var=False).pvalue
    got = row(report, "revenue_per_impression", ANY_TASK, CHALLENGER)["p_value"]
    assert got == pytest.approx(expected)
    aov = stats.ttest_ind([44.0, 12.0], [49.0, 195.0], equal_var=False).pvalue
    assert row(report, "aov", ANY_TASK, CHALLENGER)["p_value"] == pytest.approx(aov)
    assert welch_p_value(np.array(challenger), np.array(champion)) == pytest.approx(expected)
    # Degenerate: fewer than two values, or no variation on either side.
    assert math.isnan(welch_p_value(np.array([1.0]), np.array([1.0, 2.0])))
    assert math.isnan(welch_p_value(np.zeros(4), np.zeros(3)))


def test_impressed_items_and_orders_by_hand() -> None:
    tables = make_tables()
    items = impressed_items(tables, window=DAY)
    got = set(zip(items["recommendation_id"], items["task"], items["product_id"], strict=True))
    assert got == {
        ("r1", "cross_sell", "p1"), ("r1", "cross_sell", "p2"), ("r1", "upsell", "p3"),
        ("r2", "cross_sell", "p1"), ("r2", "upsell", "p5"),
        ("r3", "cross_sell", "p1"), ("r3", "cross_sell", "p2"), ("r3", "upsell", "p3"),
        ("r3", "replenish", "p6"), ("r4", "cross_sell", "p4"),
    }  # fmt: skip
    converted = items[items["converted"]].set_index(["recommendation_id", "product_id"])
    assert converted["order_id"].to_dict() == {
        ("r1", "p1"): "o1", ("r2", "p5"): "o3", ("r3", "p2"): "o4", ("r3", "p6"): "o4",
        ("r3", "p3"): None,  # by feedback only
    }  # fmt: skip
    orders = counted_orders(tables, items, window=DAY).set_index(["variant", "order_id"])
    assert orders["total"].to_dict() == {
        (CHALLENGER, "o4"): 44.0, (CHALLENGER, "o5"): 12.0,
        (CHAMPION, "o1"): 49.0, (CHAMPION, "o3"): 195.0,
    }  # fmt: skip


def test_window_moves_conversions() -> None:
    # With 2 days, r1's p3 (o6, 25 h after r1) converts: champion upsell 2/2, and o6 counts.
    wide = experiment_report(make_tables(), control=None, window=timedelta(days=2))
    assert row(wide, "conversion", "upsell", CHAMPION)["value"] == pytest.approx(2 / 2)
    # o2 is exactly 48 h after r1: the window's end is inclusive, so r1's p2 converts too.
    assert row(wide, "conversion", "cross_sell", CHAMPION)["value"] == pytest.approx(2 / 3)
    assert row(wide, "aov", ANY_TASK, CHAMPION)["n"] == 4  # o1, o3, o6, o2
    # With 1 hour, o1 (5 h after r1) is late: only r2 p5 (1 h after r2, inclusive) converts.
    narrow = experiment_report(make_tables(), control=None, window=timedelta(hours=1))
    assert row(narrow, "conversion", ANY_TASK, CHAMPION)["value"] == pytest.approx(1 / 5)


def test_purchase_feedback_without_price_uses_the_recommended_price() -> None:
    feedback = [
        (*f[:5], None) if f[1] == "purchase" else f for f in FEEDBACK
    ]  # r3 p3 bought for the listed 100 instead of 95
    report = experiment_report(make_tables(feedback=feedback), control=None)
    assert row(report, "revenue_per_impression", "upsell", CHALLENGER)["value"] == 100.0


def test_customer_in_two_variants_is_counted_under_each_and_warned() -> None:
    recs = [*RECS, ("r5", "c1", CHALLENGER, "xsell-ranker/4", "03-01 14:00")]
    items = [*ITEMS, ("r5", "cross_sell", 1, "p1", 10.0)]
    feedback = [*FEEDBACK, ("r5", "impression", None, "03-01 14:00", 1.0, None)]
    report = experiment_report(make_tables(recs, items, feedback), control=None)
    assert report.mixed_customers == 1
    assert any("1 customer(s) seen under two or more variants" in w for w in report.warnings)
    # o1 (c1, 03-01 15:00) is within a day of r1 (champion) and of r5 (challenger): it is
    # counted under both; o6 (03-02 11:00) is late for r1 but within a day of r5 (14:00).
    # r5's p1 converts too (o1's p1 is the first purchase of p1 after 14:00).
    assert row(report, "aov", ANY_TASK, CHAMPION)["n"] == 2  # o1, o3
    assert row(report, "aov", ANY_TASK, CHALLENGER)["n"] == 4  # o1, o6, o4, o5
    # challenger attach, any task: o1 (r5 p1) and o4 hold a converted item: 2 / 4.
    assert row(report, "attach_rate", ANY_TASK, CHALLENGER)["value"] == pytest.approx(2 / 4)
    assert row(report, "conversion", "cross_sell", CHALLENGER)["value"] == pytest.approx(2 / 4)
    assert "warning: 1 customer(s)" in render(report)


def test_control_choice() -> None:
    renamed = [(r[0], r[1], "a" if r[2] == CHAMPION else "b", r[3], r[4]) for r in RECS]
    # No "champion": the variant with most impressed items; a tie (5 and 5) goes to the first
    # name. An extra impressed item for "b" makes it the control.
    assert experiment_report(make_tables(renamed), control=None).control == "a"
    items = [*ITEMS, ("r4", "cross_sell", 2, "p8", 1.0)]
    feedback = [*FEEDBACK, ("r4", "impression", "p8", "03-02 09:00", 1.0, None)]
    report = experiment_report(make_tables(renamed, items, feedback), control=None)
    assert report.control == "b"
    assert report.variants == ("b", "a")
    # An explicit control wins; an unknown one is an error naming the variants.
    assert experiment_report(make_tables(), control=CHALLENGER).control == CHALLENGER
    with pytest.raises(ValueError, match=r"control 'nope' is not a variant.*challenger"):
        experiment_report(make_tables(), control="nope")


def test_no_impressions_is_one_clear_error() -> None:
    no_feedback = make_tables(feedback=[])
    with pytest.raises(NoImpressionsError, match="no impressions"):
        experiment_report(no_feedback, control=None)
    empty = {name: frame.iloc[0:0] for name, frame in make_tables().items()}
    with pytest.raises(NoImpressionsError, match="0 recommendation"):
        experiment_report(empty, control=None)
    with pytest.raises(ValueError, match="table 'feedback' is missing"):
        experiment_report({k: v for k, v in make_tables().items() if k != "feedback"}, control=None)
    with pytest.raises(ValueError, match="window must be positive"):
        experiment_report(make_tables(), control=None, window=timedelta(0))


def test_verdict_none_when_not_significant(report: ExperimentReport) -> None:
    assert report.verdict() is None  # revenue per impression, any task
    assert report.verdict("ctr", ANY_TASK) is None  # p = 0.197
    assert "no significant difference" in verdict_line(report)
    with pytest.raises(ValueError, match="no 'upgrade_rate' for task 'any'"):
        report.verdict("upgrade_rate", ANY_TASK)
    with pytest.raises(ValueError, match="alpha"):
        report.verdict(alpha=1.5)


def synthetic_split(
    n: int, rates: dict[str, tuple[float, float]], seed: int = 0
) -> dict[str, pd.DataFrame]:
    """``n`` one-item cross-sell answers per variant (one customer each), every one impressed;
    ``rates[variant] = (click rate, purchase rate)``; a purchase is 1 x the price 10."""
    rng = np.random.default_rng(seed)
    recs, items, feedback, events = [], [], [], []
    for variant, (click, buy) in rates.items():
        for i in range(n):
            rid, customer = f"{variant}-r{i}", f"{variant}-c{i}"
            recs.append((rid, customer, variant, f"m-{variant}", "03-01 10:00"))
            items.append((rid, "cross_sell", 1, "p1", 10.0))
            feedback.append((rid, "impression", None, "03-01 10:00", 1.0, None))
            if rng.random() < click:
                feedback.append((rid, "click", "p1", "03-01 10:01", 1.0, None))
            if rng.random() < buy:
                events.append((customer, "p1", "03-01 12:00", f"{rid}-o", 10.0, 1.0))
    return make_tables(recs, items, feedback, events)


def test_verdict_names_the_clearly_better_variant() -> None:
    tables = synthetic_split(3000, {CHAMPION: (0.05, 0.03), CHALLENGER: (0.10, 0.06)})
    report = experiment_report(tables, control=None)
    assert report.control == CHAMPION
    ctr = row(report, "ctr", "cross_sell", CHALLENGER)
    assert ctr["n"] == 3000
    assert ctr["value"] == pytest.approx(0.10, abs=0.015)
    assert ctr["p_value"] < 1e-6
    assert report.verdict("ctr", "cross_sell") == CHALLENGER
    assert report.verdict("conversion", ANY_TASK) == CHALLENGER
    assert report.verdict() == CHALLENGER  # revenue per impression
    assert verdict_line(report).startswith(
        "verdict (revenue_per_impression, any, alpha 0.05): challenger beats champion by +"
    )
    # The same split with the champion better: the control wins.
    flipped = synthetic_split(3000, {CHAMPION: (0.10, 0.06), CHALLENGER: (0.05, 0.03)})
    assert experiment_report(flipped, control=None).verdict("ctr", "cross_sell") == CHAMPION


def test_render_is_a_fixed_width_table(report: ExperimentReport) -> None:
    text = render(report)
    lines = text.splitlines()
    assert lines[0].startswith(
        "A/B report: 2 variant(s), control champion, attribution window 1 day"
    )
    assert "  champion    model xsell-ranker/3" in lines
    table = lines[lines.index(next(line for line in lines if line.startswith("metric"))) :]
    names = {m.name for m in METRICS}
    for line in table[2:]:  # fixed-width columns: metric, task, variant, value
        assert line == line.rstrip()
        assert line[:22].rstrip() in names and line[22] == " "
        assert line[23:33].rstrip() in {"cross_sell", "upsell", "replenish", "any"}
        assert line[34:44].rstrip() in report.variants
    ctr = next(
        line for line in table if line.startswith("ctr") and " any " in line and CHALLENGER in line
    )
    assert "0.6000" in ctr and "+0.4000" in ctr and "+200.0%" in ctr and "0.1967" in ctr
    assert len(table) == 2 + len(report.table)


def test_report_figure_has_a_panel_per_metric(report: ExperimentReport) -> None:
    from matplotlib.figure import Figure

    fig = report_figure(report)
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == [m.label for m in METRICS]
    first = next(ax for ax in fig.axes if ax.get_title() == "CTR")
    assert [t.get_text() for t in first.get_xticklabels()] == [
        "cross_sell", "upsell", "replenish", "any"
    ]  # fmt: skip
    assert len(first.patches) == 2 * 4  # a bar per variant and task
