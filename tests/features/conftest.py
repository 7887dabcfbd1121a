"""Fixtures of the feature tests: the session's synthetic shop and its snapshot."""

from feature_shop import complements, shop, shop_dir, snap, window_queries  # noqa: F401
