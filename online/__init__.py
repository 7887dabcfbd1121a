"""The online loop: the live event store, traffic splits, experiment reports and the
closed-loop simulator. Imports ``features`` only; ``serving`` and ``training`` import it."""
