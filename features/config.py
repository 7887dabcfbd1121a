"""Typed, frozen configuration of candidate generation, features, labels and guardrails."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from features.data import consumables


class FeatureConfig(BaseModel):
    """Windows, candidate sizes and business rules shared by training and serving.

    Attributes:
        cross_sell_window_days: A product bought up to this many days after the query's order
            is a cross-sell positive (besides the rest of the order).
        upsell_window_days: A pricier version bought up to this many days after the anchor was
            viewed (or bought) is an upsell positive.
        upsell_max_uplift: Upsell candidates cost more than the anchor and at most this much
            more (0.25: up to +25%).
        cross_sell_candidates: Candidates kept per cross-sell query after merging sources.
        upsell_candidates: Candidates kept per upsell query after merging sources.
        per_source: Candidates each source contributes per query before merging.
        cooc_neighbours: Neighbours kept per product in the co-occurrence tables.
        min_pair_count: Product pairs seen together fewer times are ignored (noise).
        cooc_prior: Pseudo-count that shrinks co-occurrence lift toward 1 for rare pairs.
        sequential_window_days: "Bought A, then B within N days" window.
        session_gap_minutes: Events further apart than this start a new session when the
            events table has no ``session_id``.
        history_days: Look-back for co-occurrence and association tables (None: all history).
        popularity_windows_days: Windows of the product popularity features.
        segment_column: Persona column for segment popularity (None: first of
            ``schema.SEGMENT_COLUMNS`` present).
        new_customer_days: A customer with tenure below this is "new".
        lapsing_days: A customer silent for longer than this is "lapsing".
        cross_sell_price_cap: Guardrail: a cross-sell item costs at most this multiple of the
            cart (or anchor) value.
        max_per_category: Guardrail: at most this many items of one category per list (the
            tasks whose lists hold different products: cross-sell, replenish).
        replenish_window_days: A product the customer bought before and buys again up to this
            many days after the query is a replenish positive (besides the rest of the order).
        replenish_candidates: Candidates kept per replenish query after merging sources.
        replenish_half_life_days: Half-life of the recency weight of the customer's own
            purchase frequency.
        consumable_horizon_days: A buyer who buys a product again within this many days counts
            as a repeat buyer when consumability is inferred (unlabelled shops).
        consumable_prior: Pseudo-count shrinking a product's repeat rate toward its category's.
        consumable_threshold: Inferred consumable when the shrunk repeat rate is at least this.
        latent_dims: Dimensions of the item and customer vectors (truncated SVD).
        latent_min_buyers: Products with fewer distinct buyers are never latent candidates.
        neighbour_pool: The most active customers searched for a customer's neighbours.
        neighbours: Nearest customers whose purchases the ``neighbours`` source sums.
        merge_weights: Source -> learned log-odds that a candidate of each rank band
            (:func:`features.candidates.rank_band`: 1, 2-3, 4-7, ...) is a positive, measured
            by ``xsell train`` on its first fit window (a logistic regression over the bands of
            every source, ``features.pipeline.calibrate_merge_weights``). The merge orders a
            query's candidates by the sum of the weights of the sources proposing each one.
            Empty: plain best rank.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cross_sell_window_days: int = Field(14, ge=0)
    upsell_window_days: int = Field(14, ge=1)
    upsell_max_uplift: float = Field(0.25, gt=0)
    cross_sell_candidates: int = Field(100, ge=1)
    upsell_candidates: int = Field(30, ge=1)
    per_source: int = Field(50, ge=1)
    cooc_neighbours: int = Field(100, ge=1)
    cooc_prior: float = Field(5.0, ge=0)
    min_pair_count: int = Field(2, ge=1)
    sequential_window_days: int = Field(30, ge=1)
    session_gap_minutes: int = Field(30, ge=1)
    history_days: int | None = Field(365, ge=1)
    popularity_windows_days: tuple[int, ...] = (7, 30, 90)
    segment_column: str | None = None
    new_customer_days: int = Field(30, ge=0)
    lapsing_days: int = Field(60, ge=1)
    cross_sell_price_cap: float = Field(1.5, gt=0)
    max_per_category: int = Field(2, ge=1)
    replenish_window_days: int = Field(14, ge=0)
    replenish_candidates: int = Field(50, ge=1)
    replenish_half_life_days: float = Field(90.0, gt=0)
    consumable_horizon_days: float = Field(consumables.DEFAULT_HORIZON_DAYS, gt=0)
    consumable_prior: float = Field(consumables.DEFAULT_PRIOR_STRENGTH, ge=0)
    consumable_threshold: float = Field(consumables.DEFAULT_THRESHOLD, gt=0, le=1)
    latent_dims: int = Field(32, ge=2)
    latent_min_buyers: int = Field(3, ge=1)
    neighbour_pool: int = Field(20_000, ge=1)
    neighbours: int = Field(20, ge=1)
    merge_weights: dict[str, tuple[float, ...]] = Field(default_factory=dict)

    def candidates_for(self, task: str) -> int:
        """Candidates kept per query of ``task`` (the ``<task>_candidates`` field)."""
        value = getattr(self, f"{task}_candidates", None)
        if not isinstance(value, int):
            raise ValueError(f"FeatureConfig has no {task}_candidates field")
        return value
