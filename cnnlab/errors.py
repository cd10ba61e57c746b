"""The one error type a user sees: a mistake in their input, said in one sentence."""

from __future__ import annotations

import difflib


class CnnlabError(Exception):
    """A user mistake (bad config, missing file, unusable model...).

    The CLI prints the message on one line and exits with code 2. The message is a
    complete sentence that names the file, the field path or the value, and what
    would be valid. Anything that is not a `CnnlabError` is a bug in cnnlab and keeps
    its traceback.
    """


def did_you_mean(word: str, options: list[str]) -> str:
    """" (did you mean 'accuracy'?)" for the option `word` most likely meant, or "" if none is close.

    Example:
        f"unknown metric 'acurracy'{did_you_mean('acurracy', ['accuracy', 'auc'])}"
    """
    lowered = {option.lower(): option for option in options}
    starts = [option for option in options if option.lower().startswith(word.lower())]
    if word and len(starts) == 1:  # 'acc' -> 'accuracy'
        return f" (did you mean {starts[0]!r}?)"
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f" (did you mean {lowered[close[0]]!r}?)" if close else ""
