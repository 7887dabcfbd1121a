"""Reading query files and writing recommendation files for ``xsell recommend``."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from features.batch import ANCHOR, CART, QUERY_COLUMNS, K


def read_queries(path: str | Path) -> pd.DataFrame:
    """Read a queries file (.parquet, .csv with ``cart_product_ids`` as a JSON list, or .jsonl).

    Raises:
        ValueError: Unreadable file, missing column, or a malformed cart or k.
    """
    path = Path(path)
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif path.suffix in (".jsonl", ".json"):
            frame = pd.read_json(path, lines=path.suffix == ".jsonl", dtype=False)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except Exception as exc:  # any reader failure: a corrupt or unreadable file
        raise ValueError(f"queries file {path}: cannot read it: {exc}") from exc
    missing = [c for c in (*QUERY_COLUMNS, K) if c not in frame.columns]
    if missing:
        raise ValueError(f"queries file {path}: missing column(s) {missing}")
    if path.suffix not in (".parquet", ".jsonl", ".json"):
        try:
            frame[CART] = [json.loads(c) if c else [] for c in frame[CART]]
        except json.JSONDecodeError as exc:
            raise ValueError(
                f'queries file {path}: {CART} must hold JSON lists like ["P1", "P2"]: {exc}'
            ) from exc
    frame[ANCHOR] = frame[ANCHOR].where(frame[ANCHOR].notna() & (frame[ANCHOR] != ""), None)
    frame[CART] = [list(c) if c is not None else [] for c in frame[CART]]
    frame[K] = pd.to_numeric(frame[K], errors="coerce")
    if frame[K].isna().any() or (frame[K] < 1).any() or (frame[K] % 1 != 0).any():
        raise ValueError(f"queries file {path}: column k must be a whole number >= 1")
    frame["as_of"] = pd.to_datetime(frame["as_of"], errors="coerce")
    if frame["as_of"].isna().any():
        raise ValueError(f"queries file {path}: column as_of has unparsable timestamps")
    return frame


def write_recommendations(frame: pd.DataFrame, path: str | Path) -> None:
    """Write ``query_id, task, rank, product_id, score`` as Parquet or CSV by extension."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
