"""The one exception type that means "the user asked for something we cannot do".

The CLI prints a UserError as a single line (``alexnet: error: ...``) and exits
non-zero; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: a path, an option, a file's contents.

    The message must name the thing and the problem in one line, e.g.
    ``"data/cat.jpg: truncated JPEG (read 1,024 of 20,480 bytes)"``.
    """

    exit_code = 2
