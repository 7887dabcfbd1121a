"""Rolling backtest: train and evaluate on consecutive test windows, one MLflow run per fold.

    python -m benchmarks.backtest --data DIR [--folds 3] [--test-days 28] [--config FILE]
        [--drop-consumable] [--store DIR] [--only-fold N]

Fold ``i`` trains on data before ``last - (folds - i) * test_days`` and tests on the next
``test_days``: the same job as ``xsell train --train-until``, registered under its own model
name so the folds never compete for ``champion``. ``--drop-consumable`` removes the products'
``is_consumable`` column first (consumability is then inferred from repurchases). Prints, per
fold and task, the ranker against its best baseline on the same holdout queries and the served
policy, as a Markdown table.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd

from features.data import schema as s
from features.data.io import load_shop, read_table
from training.config import TrainConfig
from training.train import TrainResult, train


def shop_without_consumable(data: Path, out: Path) -> Path:
    """A copy of the shop folder whose products table has no ``is_consumable`` column."""
    out.mkdir(parents=True, exist_ok=True)
    for path in data.iterdir():
        if path.is_file() and path.stem != s.PRODUCTS:
            shutil.copy2(path, out / path.name)
    products = read_table(data, s.PRODUCTS)
    assert products is not None
    products.drop(columns=[s.IS_CONSUMABLE], errors="ignore").to_parquet(
        out / f"{s.PRODUCTS}.parquet", index=False
    )
    return out


def rows(result: TrainResult, fold: int, label: str) -> list[dict[str, object]]:
    """One row per task of a fold's result."""
    out = []
    for task, ev in result.evaluations.items():
        best = ev.best_baseline
        model = ev.metrics["ndcg_at_10"]
        base = ev.metrics[f"baseline_{best}.ndcg_at_10"]
        out.append(
            {
                "shop": label,
                "fold": fold,
                "test from": str(result.split.train_until.date()),
                "task": task,
                "queries": int(ev.metrics["n_queries"]),
                "ranker ndcg@10": round(model, 4),
                "best baseline": best,
                "baseline ndcg@10": round(base, 4),
                "ratio": round(model / base, 3) if base > 0 else float("nan"),
                "ranker hit@10": round(ev.metrics["hit_rate_at_10"], 4),
                "baseline hit@10": round(ev.metrics[f"baseline_{best}.hit_rate_at_10"], 4),
                "cand. recall": round(ev.metrics["candidate_recall"], 3),
                "served": result.policies[task],
            }
        )
    return out


def markdown(table: list[dict[str, object]]) -> str:
    """A Markdown table of the rows (no extra dependency)."""
    if not table:
        return ""
    cols = list(table[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in table]
    return "\n".join(lines)


def main() -> None:
    """Run the folds and print the table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--test-days", type=int, default=28)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--drop-consumable", action="store_true")
    parser.add_argument("--store", type=Path, default=None, help="MLflow store folder")
    parser.add_argument("--label", default=None)
    parser.add_argument("--only-fold", type=int, default=None, help="run just this fold (1-based)")
    args = parser.parse_args()
    cfg = TrainConfig.from_yaml(args.config)
    cfg = cfg.model_copy(
        update={"split": cfg.split.model_copy(update={"test_days": args.test_days})}
    )
    work = Path(tempfile.mkdtemp(prefix="xsell-backtest-"))
    data = args.data
    if args.drop_consumable:
        data = shop_without_consumable(args.data, work / "shop")
    label = args.label or (data.name + (" (no is_consumable)" if args.drop_consumable else ""))
    store = args.store or work / "mlruns"
    last = load_shop(data).time_range()[1].normalize()
    table = []
    folds = range(1, args.folds + 1) if args.only_fold is None else [args.only_fold]
    for fold in folds:
        until = last - pd.Timedelta(days=(args.folds - fold + 1) * args.test_days)
        start = time.perf_counter()
        result = train(
            data,
            config=cfg.model_copy(update={"model_name": f"{cfg.model_name}-backtest-{fold}"}),
            train_until=until,
            root=store,
            experiment=f"backtest-{label}",
            progress=lambda msg: print(f"  .. {msg}", flush=True),
        )
        print(f"fold {fold}: trained until {until.date()} in {time.perf_counter() - start:.0f} s")
        table.extend(rows(result, fold, label))
        print(markdown(table), flush=True)
    print("\n" + markdown(table))


if __name__ == "__main__":
    main()
