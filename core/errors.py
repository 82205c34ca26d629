"""Typed errors whose message is shown to the user as is and names the fix."""


class AutoTTSError(Exception):
    """Base class: the CLI prints the message without a traceback, the MCP server returns it as a tool error."""


class ReplayFormatError(AutoTTSError):
    """A replay file is malformed; the message names the file, the question index and the field."""

    def __init__(self, path: str, problem: str, *, question: int | None = None, field: str | None = None):
        where = str(path)
        if question is not None:
            where += f", question {question}"
        if field is not None:
            where += f", field '{field}'"
        super().__init__(f"{where}: {problem}")
        self.path, self.question, self.field, self.problem = str(path), question, field, problem


class ControllerSpecError(AutoTTSError):
    """A controller spec such as `cmc:beta=0.5` could not be parsed or names an unknown option."""


class EnvironmentPathError(AutoTTSError):
    """An ENV argument is neither a replay file nor a folder holding replay files."""


class UnrecordedStepError(AutoTTSError):
    """A controller stepped a recorded live run past what was generated live (a branch that was still running when
    the recorded controller stopped). Deliberately not a ValueError, so controllers do not mistake it for an
    exhausted pool."""
