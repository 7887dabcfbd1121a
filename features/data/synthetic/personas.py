"""The synthetic shop's customers: personas, signup dates and latent parameters.

Age band, income band, region and household size drive price sensitivity, upgrade propensity,
category affinity and activity; the parameters are written as planted truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.data.synthetic.arrays import _draw_rows
from features.data.synthetic.catalog import _Catalog
from features.data.synthetic.seasonality import DAY_S, _Calendar

# Persona column names (free persona attributes of the ``customers`` table).
AGE_BAND = "age_band"
INCOME_BAND = "income_band"
REGION = "region"
HOUSEHOLD_SIZE = "household_size"
SEGMENT = "segment"

AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
AGE_BAND_P = (0.12, 0.2, 0.2, 0.18, 0.15, 0.15)
AGE_GROUPS = ("young", "middle", "senior")
_AGE_GROUP_OF_BAND = np.array([0, 0, 1, 1, 2, 2])
INCOME_BANDS = ("low", "mid", "high")
_INCOME_BY_AGE_GROUP = np.array([[0.45, 0.4, 0.15], [0.25, 0.45, 0.3], [0.35, 0.45, 0.2]])
REGIONS = ("north", "south", "east", "west", "capital")
_REGION_P = (0.2, 0.22, 0.18, 0.15, 0.25)
_REGION_PRICE_SHIFT = np.array([0.0, 0.03, 0.0, 0.02, -0.06])
_HOUSEHOLD_BY_AGE_GROUP = np.array(
    [[0.4, 0.3, 0.15, 0.1, 0.05], [0.15, 0.3, 0.2, 0.25, 0.1], [0.35, 0.5, 0.08, 0.05, 0.02]]
)
# Beta(a, b) of price sensitivity by income band (means 0.7, 0.5, 0.3).
_PRICE_SENSITIVITY_BETA = np.array([[7.0, 3.0], [5.0, 5.0], [3.0, 7.0]])
_UPGRADE_MEAN_BY_INCOME = np.array([0.2, 0.35, 0.5])
_UPGRADE_SHIFT_BY_AGE_GROUP = np.array([0.05, 0.0, -0.05])
_ACTIVITY_BY_INCOME = np.array([0.85, 1.0, 1.15])

_SIGNUP_IN_YEAR_SHARE = 0.2
_SIGNUP_HISTORY_DAYS = 3 * 365

_ONE_TIME_SHARE = (0.25, 0.4)  # (signed up before start, signed up during the year)
_BASE_MISSIONS = 10.0  # extra missions of a repeat customer over a full year (mean)
_MISSION_DISPERSION = 1.5  # negative binomial shape: heavy-tailed activity
_FAVORITE_SHARE_BETA = (2.0, 4.0)


def _persona_group(age_group: np.ndarray, income: np.ndarray, household: np.ndarray) -> np.ndarray:
    """Persona group index used by the category samplers."""
    return (age_group * 3 + income) * 2 + (household >= 3)


@dataclass(frozen=True)
class _Customers:
    """Customers of a chunk: persona, latent parameters and activity (chunk-local order)."""

    age_band: np.ndarray
    age_group: np.ndarray
    income: np.ndarray
    region: np.ndarray
    household: np.ndarray
    group: np.ndarray
    signup_s: np.ndarray
    first_day: np.ndarray
    price_sensitivity: np.ndarray
    upgrade_propensity: np.ndarray
    cross_sell_propensity: np.ndarray
    repeat_loyalty: np.ndarray
    favorite: np.ndarray
    favorite_share: np.ndarray
    one_time: np.ndarray
    n_missions: np.ndarray

    @property
    def n(self) -> int:
        """Number of customers."""
        return len(self.age_band)


def _draw_customers(
    rng: np.random.Generator, n: int, catalog: _Catalog, calendar: _Calendar
) -> _Customers:
    """Draw personas, signup dates, latent parameters and activity of ``n`` customers."""
    age_band = rng.choice(len(AGE_BANDS), size=n, p=AGE_BAND_P)
    age_group = _AGE_GROUP_OF_BAND[age_band]
    income = _draw_rows(rng, _INCOME_BY_AGE_GROUP, age_group)
    region = rng.choice(len(REGIONS), size=n, p=_REGION_P)
    household = 1 + _draw_rows(rng, _HOUSEHOLD_BY_AGE_GROUP, age_group)
    group = _persona_group(age_group, income, household)

    in_year = rng.random(n) < _SIGNUP_IN_YEAR_SHARE
    signup_day = np.where(
        in_year,
        rng.integers(0, calendar.days - 1, n),
        -rng.integers(1, _SIGNUP_HISTORY_DAYS + 1, n),
    )
    signup_s = calendar.start_s + signup_day * DAY_S + rng.integers(0, DAY_S, n)
    one_time = rng.random(n) < np.where(in_year, _ONE_TIME_SHARE[1], _ONE_TIME_SHARE[0])
    # Missions start after signup; earlier customers' missions start in the burn-in, except a
    # one-time customer's single mission, which falls inside the period.
    first_day = np.maximum(signup_day + 1, np.where(one_time, 0, -calendar.burn_in))

    ps_beta = _PRICE_SENSITIVITY_BETA[income]
    price_sensitivity = np.clip(
        rng.beta(ps_beta[:, 0], ps_beta[:, 1]) + _REGION_PRICE_SHIFT[region], 0.02, 0.98
    )
    upgrade_mean = _UPGRADE_MEAN_BY_INCOME[income] + _UPGRADE_SHIFT_BY_AGE_GROUP[age_group]
    upgrade_propensity = rng.beta(8.0 * upgrade_mean, 8.0 * (1.0 - upgrade_mean))
    cross_sell_propensity = rng.beta(3.0, 3.0, n)
    repeat_loyalty = rng.beta(4.0, 2.0, n)
    favorite = catalog.favorite_sampler.sample(rng, group)
    favorite_share = rng.beta(*_FAVORITE_SHARE_BETA, n)

    years = np.maximum((calendar.days - first_day) / 365.0, 0.01)  # simulated window
    mean_extra = _BASE_MISSIONS * (0.8 + 0.1 * household) * _ACTIVITY_BY_INCOME[income] * years
    extra = rng.negative_binomial(
        _MISSION_DISPERSION, _MISSION_DISPERSION / (_MISSION_DISPERSION + mean_extra)
    )
    n_missions = np.where(one_time, 1, 2 + extra)
    return _Customers(
        age_band=age_band,
        age_group=age_group,
        income=income,
        region=region,
        household=household,
        group=group,
        signup_s=signup_s,
        first_day=first_day,
        price_sensitivity=price_sensitivity,
        upgrade_propensity=upgrade_propensity,
        cross_sell_propensity=cross_sell_propensity,
        repeat_loyalty=repeat_loyalty,
        favorite=favorite,
        favorite_share=favorite_share,
        one_time=one_time,
        n_missions=n_missions.astype(np.int64),
    )
