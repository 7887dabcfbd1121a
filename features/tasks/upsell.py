"""upsell: pricier versions of the anchor's family, within the uplift cap."""

from __future__ import annotations

from features import rules
from features.data import schema as s
from features.queries import upsell_queries
from features.tasks import Baseline, Task, register_task

TASK = register_task(
    Task(
        name=s.UPSELL,
        description="a pricier version of the anchor's family, at most upsell_max_uplift more",
        queries=upsell_queries,
        eligibility=(rules.not_owned_durable,),
        guardrails=(
            rules.not_in_context,
            rules.in_stock,
            rules.not_owned_durable,
            rules.within_uplift_cap,
        ),
        diverse=False,
        placements={"product_page": 3},
        baselines=(
            Baseline("popular", "prod_pop_{long}", description="most popular products"),
            Baseline("segment_popular", "seg_pop_share", description="most popular in the segment"),
            Baseline(
                "popular_pricier",
                "src_family_popular_score",
                description="most popular pricier version of the same family",
            ),
            Baseline(
                "next_tier", "src_family_next_tier_score", description="the next price step up"
            ),
        ),
        needs_anchor=True,
    )
)
