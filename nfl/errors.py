"""Errors that mean "the input is wrong, here is what to change": the CLI prints them without a traceback."""


class UserInputError(ValueError):
    """Base class of errors caused by a config value or data file, whose message says what to change."""
