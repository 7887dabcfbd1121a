"""``python -m serving --model URI --host H --port P --workers N [--access-log]``: what
``xsell serve`` runs.

The CLI (in ``training/``) starts this in a child process, so training never imports serving.
"""

from __future__ import annotations

import argparse
import sys

from online.store import StoreError
from serving.service import serve


def main() -> None:
    """Parse the flags and serve until interrupted."""
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--model", default=None, help="model URI or folder")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--access-log", action="store_true", help="log one line per request (off by default)"
    )
    parser.add_argument("--store", default=None, help="event store folder or SQLAlchemy URL")
    parser.add_argument("--experiment", default=None, help="experiment file (traffic split)")
    args = parser.parse_args()
    try:
        serve(
            model=args.model,
            host=args.host,
            port=args.port,
            workers=args.workers,
            access_log=args.access_log,
            store=args.store,
            experiment=args.experiment,
        )
    except (ValueError, StoreError) as exc:  # bad model, experiment or store: one line
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
