"""The one error type a user sees: a mistake in their input, said in one sentence."""


class CnnlabError(Exception):
    """A user mistake (bad config, missing file, unusable model...).

    The CLI prints the message on one line and exits with code 2. The message is a
    complete sentence that names the file, the field path or the value, and what
    would be valid. Anything that is not a `CnnlabError` is a bug in cnnlab and keeps
    its traceback.
    """
