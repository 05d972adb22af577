"""User-facing errors: the CLI prints their message as one line and exits with code 2."""


class ImbenchError(Exception):
    """A problem the user can fix (bad config value, missing dataset, missing weights)."""


class ConfigError(ImbenchError):
    """A config key holds a value that is not allowed; the message names the key."""


class DataError(ImbenchError):
    """A dataset file is missing or unreadable; the message names the file."""
