"""cross_sell: complements new to the customer, outside the families of the context."""

from __future__ import annotations

from features import rules
from features.data import schema as s
from features.queries import cross_sell_queries
from features.tasks import Baseline, Task, register_task

TASK = register_task(
    Task(
        name=s.CROSS_SELL,
        description="complements the customer never bought, outside the context's families",
        queries=cross_sell_queries,
        eligibility=(rules.outside_context_families, rules.new_to_customer),
        guardrails=(
            rules.not_in_context,
            rules.in_stock,
            rules.new_to_customer,
            rules.within_cart_price_cap,
        ),
        diverse=True,
        placements={"product_page": 2, "cart": 3, "checkout": 3, "post_purchase": 3},
        baselines=(
            Baseline("popular", "prod_pop_{long}", description="most popular products"),
            Baseline("segment_popular", "seg_pop_share", description="most popular in the segment"),
            Baseline(
                "cooc_conf",
                "ctx_conf_sum",
                description="frequently bought together: summed P(b | a) over the context",
            ),
            Baseline("cooc_lift", "ctx_lift_max", description="highest co-occurrence lift"),
        ),
        popular_fallback=True,
    )
)
