"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class PrunememError(Exception):
    """Bad input or a failed check. ``str(err)`` is a single line naming the culprit."""
