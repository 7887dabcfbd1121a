"""Progress of the long steps: short message lines and, on a terminal, bars with an ETA.

:class:`Progress` is what :func:`training.train.train` reports to. It says messages through a
callable (``print``-like) and opens a ``tqdm`` bar per long step (building a task's sets cut-off
by cut-off, fitting a ranker round by round, evaluating task by task). Bars are off unless asked
for (the CLI asks on a terminal); ``features/`` stays free of tqdm: it calls plain callbacks,
which :meth:`Progress.cutoffs` turns into bar updates.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TextIO


def _tqdm() -> Any:
    from tqdm import tqdm  # type: ignore[import-untyped]  # no stubs installed

    return tqdm


class Step:
    """One open step: ``advance()`` after each unit of work (no-op without a bar)."""

    def __init__(self, bar: Any | None) -> None:
        self._bar = bar

    def advance(self, n: int = 1, note: str | None = None) -> None:
        """Count ``n`` more units done; ``note`` replaces the bar's postfix."""
        if self._bar is None:
            return
        if note is not None:
            self._bar.set_postfix_str(note, refresh=False)
        self._bar.update(n)


class Progress:
    """Messages and (optionally) bars.

    Args:
        say: Where message lines go (default: nowhere).
        bars: Show tqdm bars; ``None``: only when ``stream`` is a terminal.
        stream: Where bars are drawn (default: stderr).
    """

    def __init__(
        self,
        say: Callable[[str], None] | None = None,
        *,
        bars: bool | None = False,
        stream: TextIO | None = None,
    ) -> None:
        self._say = say
        self._stream = stream if stream is not None else sys.stderr
        if bars is None:
            isatty = getattr(self._stream, "isatty", None)
            bars = bool(isatty and isatty())
        self.bars = bars
        self._open = 0

    @classmethod
    def of(cls, progress: Progress | Callable[[str], None] | None) -> Progress:
        """``progress`` itself, or a bar-less :class:`Progress` around a plain callback."""
        if isinstance(progress, Progress):
            return progress
        return cls(progress)

    def __call__(self, message: str) -> None:
        """Say one line (above any open bar)."""
        if self._say is None:
            return
        if self._open:
            with _tqdm().external_write_mode(file=self._stream):
                self._say(message)
        else:
            self._say(message)

    @contextmanager
    def step(self, description: str, total: int, unit: str = "it") -> Iterator[Step]:
        """A bar of ``total`` units for one long step; it completes when the block ends."""
        if not self.bars or total <= 0:
            yield Step(None)
            return
        bar = _tqdm()(
            total=total,
            desc=description,
            unit=unit,
            file=self._stream,
            leave=True,
            # COLUMNS, else the terminal's width, else 100 (a pty may report width 0)
            ncols=min(shutil.get_terminal_size((100, 20)).columns, 120),
            bar_format="{desc}: {percentage:3.0f}%|{bar:20}| {n_fmt}/{total_fmt} {unit} "
            "[{elapsed}<{remaining}{postfix}]",
        )
        self._open += 1
        try:
            yield Step(bar)
            if bar.n < total:  # finished early (early stopping, empty cut-offs)
                bar.update(total - bar.n)
        finally:
            self._open -= 1
            bar.close()

    @contextmanager
    def cutoffs(self, description: str, total: int) -> Iterator[Callable[[str], None]]:
        """A bar over the cut-offs of one build, fed by the ``progress`` callback of
        :func:`features.pipeline.build_task_sets` (called when a cut-off is done)."""
        with self.step(description, total, unit="cut-offs") as step:

            def callback(message: str) -> None:
                if self.bars:
                    step.advance(1, message.removeprefix("cut-off "))

            yield callback

    def lightgbm_callback(self, step: Step) -> Callable[[Any], None]:
        """A LightGBM training callback advancing ``step`` once per boosting round."""

        def callback(env: Any) -> None:
            step.advance(1)

        return callback
