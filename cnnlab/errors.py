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


def printable(text: str) -> str:
    r"""`text` with its control and format characters escaped (`\n`, `\x1b`, `\u202e`).

    A message names files, and a file name may hold a newline, a terminal escape sequence or a
    right-to-left override: printed raw, one error would become two lines, recolour the
    terminal or show another name than the file's. Escaped, it stays one line that says what
    the name holds.
    """
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)
