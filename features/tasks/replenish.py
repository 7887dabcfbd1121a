"""replenish: consumables the customer bought before and is likely to buy again now."""

from __future__ import annotations

from features import rules
from features.data import schema as s
from features.queries import replenish_queries
from features.tasks import Baseline, Task, register_task

TASK = register_task(
    Task(
        name=s.REPLENISH,
        description="consumables the customer bought before, when they are due again",
        queries=replenish_queries,
        eligibility=(rules.bought_consumable, rules.not_in_context),
        guardrails=(
            rules.not_in_context,
            rules.in_stock,
            rules.bought_consumable,
            rules.not_just_bought,
        ),
        diverse=True,
        placements={"cart": 2, "checkout": 2, "post_purchase": 3},
        baselines=(
            Baseline(
                "personal_frequency",
                "cust_product_orders",
                tie_break="cust_product_last_day",
                description="most often bought, most recent first on ties",
            ),
            Baseline(
                "frequency_recency",
                "cust_product_frequency",
                description="recency-weighted purchase frequency",
            ),
        ),
    )
)
