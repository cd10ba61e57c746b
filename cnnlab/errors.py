"""The one error type a user sees: a mistake in their input, said in one sentence."""


class CnnlabError(Exception):
    """A user mistake (bad config, missing file, unusable model...).

    The CLI prints the message on one line and exits with code 2. The message is a
    complete sentence that names the file, the field path or the value, and what
    would be valid. Anything that is not a `CnnlabError` is a bug in cnnlab and keeps
    its traceback.
    """


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
