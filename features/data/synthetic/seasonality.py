"""Seasonality of the synthetic shop: the simulated period and its day-level patterns.

A November / December bump, gift-season and promotion days, a weekly and an hourly profile and
the quarters that family popularity drifts by, over the period and a burn-in before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

N_QUARTERS = 4

DAY_S = 86_400

_BURN_IN_DAYS = 90  # simulated days before start so rhythms are running on day 0

_MONTH_FACTOR = np.array([1.0, 0.85, 0.95, 0.95, 1.0, 0.9, 0.85, 0.9, 1.0, 1.05, 1.3, 1.55])
_WEEKDAY_FACTOR = np.array([1.05, 0.95, 0.95, 1.0, 1.0, 1.1, 1.2])  # Monday first
_HOUR_WEIGHTS = np.array(
    [0.3, 0.15, 0.1, 0.08, 0.08, 0.15, 0.4, 0.8, 1.0, 1.1, 1.1, 1.2,
     1.4, 1.3, 1.1, 1.0, 1.0, 1.1, 1.3, 1.6, 1.8, 1.7, 1.2, 0.6]
)  # fmt: skip


@dataclass(frozen=True)
class _Calendar:
    """Day-level seasonality of the simulated period and of a burn-in before it.

    Day indices count from ``start`` (day 0) and may be negative down to ``-burn_in``: missions
    of customers who signed up earlier start there, so consumable rhythms and follow-ups are
    already running on day 0. Rows dated before ``start`` are dropped before writing.

    Attributes:
        start_s: First second of the period (seconds since the epoch).
        days: Number of days of the period.
        burn_in: Number of simulated days before the period.
        day_cdf: CDF over days ``-burn_in .. days - 1`` (month, holiday and weekday factors).
        hour_cdf: CDF of the hour of day.
        gift: 1 on gift-season days (20 November to 24 December), else 0, per day.
        promo: Promotion days (Black Friday week, early January sales), per day.
        quarter: Quarter of the period (0..3) per day, burn-in days in quarter 0.
    """

    start_s: int
    days: int
    burn_in: int
    day_cdf: np.ndarray
    hour_cdf: np.ndarray
    gift: np.ndarray
    promo: np.ndarray
    quarter: np.ndarray

    @classmethod
    def build(cls, start: str, days: int, burn_in: int = _BURN_IN_DAYS) -> _Calendar:
        """Calendar of ``days`` days from ISO date ``start``, after ``burn_in`` earlier days."""
        first = np.datetime64(start, "D")
        dates = first + np.arange(-burn_in, days)
        month0 = dates.astype("datetime64[M]")
        month = month0.astype(np.int64) % 12 + 1
        dom = (dates - month0.astype("datetime64[D]")).astype(np.int64) + 1
        weekday = (dates.astype(np.int64) + 3) % 7
        black_friday = (month == 11) & (dom >= 24)
        gift = ((month == 11) & (dom >= 20)) | ((month == 12) & (dom <= 24))
        promo = black_friday | ((month == 12) & (dom <= 2)) | ((month == 1) & (dom <= 10))
        weight = (
            _MONTH_FACTOR[month - 1]
            * _WEEKDAY_FACTOR[weekday]
            * np.where(black_friday, 1.5, 1.0)
            * np.where((month == 12) & (dom >= 26), 0.75, 1.0)
        )
        day_cdf = np.cumsum(weight) / weight.sum()
        day_cdf[-1] = 1.0
        hour_cdf = np.cumsum(_HOUR_WEIGHTS) / _HOUR_WEIGHTS.sum()
        hour_cdf[-1] = 1.0
        return cls(
            start_s=int(first.astype("datetime64[s]").astype(np.int64)),
            days=days,
            burn_in=burn_in,
            day_cdf=day_cdf,
            hour_cdf=hour_cdf,
            gift=gift.astype(np.int64),
            promo=promo,
            quarter=np.maximum(np.arange(-burn_in, days), 0) * N_QUARTERS // days,
        )

    @property
    def end_s(self) -> int:
        """First second after the period."""
        return self.start_s + self.days * DAY_S

    def draw_days(self, rng: np.random.Generator, first_day: np.ndarray) -> np.ndarray:
        """A seasonal day index in ``[first_day, days)`` per element (``first_day >= -burn_in``)."""
        first = first_day + self.burn_in
        lo = np.where(first > 0, self.day_cdf[first - 1], 0.0)
        u = lo + rng.random(len(first)) * (1.0 - lo)
        day = np.searchsorted(self.day_cdf, u, side="right")
        return np.clip(day, first, self.burn_in + self.days - 1) - self.burn_in

    def draw_times(self, rng: np.random.Generator, day: np.ndarray) -> np.ndarray:
        """Timestamps (epoch seconds) on ``day`` following the hourly profile."""
        hour = np.minimum(np.searchsorted(self.hour_cdf, rng.random(len(day)), "right"), 23)
        return self.start_s + day * DAY_S + hour * 3600 + rng.integers(0, 3600, len(day))

    def day_of(self, ts: np.ndarray) -> np.ndarray:
        """Day index of epoch-second timestamps."""
        return (ts - self.start_s) // DAY_S

    def is_gift(self, day: np.ndarray) -> np.ndarray:
        """1 on gift-season days, else 0."""
        return self.gift[day + self.burn_in]

    def is_promo(self, day: np.ndarray) -> np.ndarray:
        """Whether each day is a promotion day."""
        return self.promo[day + self.burn_in]

    def quarter_of(self, day: np.ndarray) -> np.ndarray:
        """Quarter of the period (0..3) of each day."""
        return self.quarter[day + self.burn_in]
