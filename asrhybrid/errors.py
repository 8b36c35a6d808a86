"""Errors a user can act on. The CLI prints their message without a traceback."""


class AsrHybridError(Exception):
    """Base class: the message alone must tell the user what to fix."""


class DataError(AsrHybridError):
    """Bad corpus input: the message names the utterance, file or line."""

    def __init__(self, problems: list[str], context: str = ""):
        self.problems = list(problems)
        head = f"{context}: " if context else ""
        shown = self.problems[:20]
        more = len(self.problems) - len(shown)
        lines = [f"{head}{len(self.problems)} problem(s) in the input data; nothing was written"]
        lines += [f"  - {p}" for p in shown]
        if more > 0:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


class ConfigError(AsrHybridError):
    """A recipe configuration or command-line option that cannot work."""


class StaleOutputError(AsrHybridError):
    """A finished stage's outputs were made with other options than asked for now."""
