"""The one exception type for bad user input: entry points print its message on one line and exit 1."""


class ConfigError(ValueError):
    """Bad user input (a config value, a path, a mismatched artifact). The message names the bad value and the
    valid choices; entry points print it as a single line and exit non-zero."""


def check_choice(name: str, value, choices) -> None:
    """Raise ConfigError unless ``value`` is one of ``choices``."""
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is not valid; choose one of {choices}")
