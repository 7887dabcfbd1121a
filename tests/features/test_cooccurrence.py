"""Sessions split by time gaps (``features/cooccurrence.py: sessions``) on hand-made events, and
their effect on the snapshot's browsing tables."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.config import FeatureConfig
from features.cooccurrence import sessions
from features.data import schema as s
from features.data.io import load_shop
from features.snapshot import build_snapshot


def _events(
    rows: list[tuple[str, str]], session_ids: list[str | None] | None = None
) -> pd.DataFrame:
    """Events of ``(customer, timestamp)`` rows, in the given (deliberately unsorted) order."""
    frame = pd.DataFrame(
        {
            s.CUSTOMER_ID: [c for c, _ in rows],
            s.PRODUCT_ID: [f"p{i}" for i in range(len(rows))],
            s.TS: pd.to_datetime([t for _, t in rows]),
            s.EVENT_TYPE: s.VIEW,
        }
    )
    if session_ids is not None:
        frame[s.SESSION_ID] = session_ids
    return frame


def _same(sess: np.ndarray, i: int, j: int) -> bool:
    return bool(sess[i] == sess[j])


# Row order is not time order: the function must sort per customer itself.
ROWS = [
    ("a", "2024-01-01 10:00"),  # 0  a: first session
    ("b", "2024-01-01 10:10"),  # 1  b: its own customer, same minute range as a
    ("a", "2024-01-01 10:20"),  # 2  a: 20 min after row 0 -> same session
    ("a", "2024-01-01 11:30"),  # 3  a: 40 min after row 5 -> new session
    ("a", "2024-01-01 10:50"),  # 4  a: exactly 30 min after row 2 -> same session (not > gap)
    ("a", "2024-01-01 10:51"),  # 5  a: 1 min after row 4
    ("b", "2024-01-02 10:10"),  # 6  b: a day later -> new session
]


def test_gaps_split_sessions_per_customer() -> None:
    sess = sessions(_events(ROWS), gap_minutes=30)
    assert sess.dtype.kind == "i"
    assert len(sess) == len(ROWS)
    assert _same(sess, 0, 2) and _same(sess, 2, 4) and _same(sess, 4, 5)
    assert not _same(sess, 5, 3)
    assert not _same(sess, 1, 6)
    assert not _same(sess, 0, 1)  # customers never share a session
    assert len(set(sess.tolist())) == 4
    # numbered from 0 without holes
    assert sorted(set(sess.tolist())) == list(range(4))


@pytest.mark.parametrize(
    ("gap", "n_sessions"),
    [(1, 6), (10, 6), (20, 5), (30, 4), (45, 3), (24 * 60, 2)],
)
def test_the_gap_sets_how_many_sessions(gap: int, n_sessions: int) -> None:
    # a: 10:00, 10:20, 10:50, 10:51, 11:30 -> gaps 20, 30, 1, 39; b: 10:10 and a day later
    sess = sessions(_events(ROWS), gap_minutes=gap)
    assert len(set(sess.tolist())) == n_sessions


def test_session_ids_win_over_gaps() -> None:
    ids = ["x", "x", "x", "y", "y", "y", "x"]
    sess = sessions(_events(ROWS, ids), gap_minutes=30)
    # a's rows 0, 2 and 4, 5 are in x and y: the ids decide, not the gaps
    assert _same(sess, 0, 2) and not _same(sess, 2, 4) and _same(sess, 3, 4) and _same(sess, 4, 5)
    # the same session id of two customers is two sessions
    assert not _same(sess, 0, 1)
    assert _same(sess, 1, 6)  # b's "x", a day apart, is still one session
    assert len(set(sess.tolist())) == 3


def test_a_partly_missing_session_id_falls_back_to_gaps() -> None:
    ids = ["x", "x", None, "y", "y", "y", "x"]
    with_gaps = sessions(_events(ROWS), gap_minutes=30)
    np.testing.assert_array_equal(sessions(_events(ROWS, ids), gap_minutes=30), with_gaps)


def test_no_events() -> None:
    assert len(sessions(_events([]), gap_minutes=30)) == 0


def _last_session_products(shop_dir: Path, gap: int) -> set[str]:
    """Products of customer c1's last session in a snapshot of the tiny shop."""
    shop = load_shop(shop_dir)
    snap = build_snapshot(
        shop, as_of=pd.Timestamp("2024-03-15"), config=FeatureConfig(session_gap_minutes=gap)
    )
    cols, _ = snap.browsing.last_session.row(snap.customer_index["c1"])
    return {str(snap.product_ids[int(p)]) for p in cols}


def test_the_snapshot_uses_gap_sessions_without_session_ids(
    tiny_shop_dir: Path, tables: dict[str, pd.DataFrame], rewrite: Callable[..., Path]
) -> None:
    # c1 viewed p1 at 20:00 and p2 at 20:05 in session s1
    assert _last_session_products(tiny_shop_dir, gap=1) == {"p1", "p2"}  # the ids win
    events = tables[s.EVENTS].drop(columns=[s.SESSION_ID])
    rewrite(tiny_shop_dir, s.EVENTS, events)
    assert _last_session_products(tiny_shop_dir, gap=30) == {"p1", "p2"}
    assert _last_session_products(tiny_shop_dir, gap=4) == {"p2"}
