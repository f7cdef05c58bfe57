"""Errors raised for bad input. The entry point prints them without a traceback."""


class MfsiError(Exception):
    """Bad input a user can fix: the message names the file/key/value and what is expected."""


class ConfigError(MfsiError):
    """A config value is out of range or inconsistent."""


class DataError(MfsiError):
    """A dataset is missing, too small or malformed."""


class GenerationError(MfsiError):
    """A generation endpoint refused requests or could not be reached."""
