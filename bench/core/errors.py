"""User-facing errors: the CLI prints them as one line and exits 2, without a traceback."""

from __future__ import annotations

import difflib


class BenchError(Exception):
    """A mistake in the user's input (config key, preset, name, file). One line, exit code 2."""


class RunFailed(Exception):
    """A run that started and could not go on (e.g. its weights became non-finite). One line,
    exit code 1; what was logged before stays."""


class NonFinite(RunFailed, ValueError):
    """Non-finite weights or probabilities: the run cannot go on."""


def did_you_mean(name: str, choices: list[str] | tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the closest valid choice, or the list of choices."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    if close:
        return f" (did you mean '{close[0]}'?)"
    return f" (choose from: {', '.join(sorted(choices))})"
