"""The short exception tree of krea-sweep.

    PipelineError                 expected; shown as one line on stderr, exit 1
    ├── ConfigError               a broken sweep file, override or config value
    │   └── UnknownModel          a model AIR the registry (pipeline/models) does not know
    ├── ValidationFailed          expanded requests that break the model's schema (all at once)
    ├── BudgetExceeded            the plan's estimate is over budget.max_usd
    ├── SelectError               a krea-reproduce `select` that names nothing or cannot be read
    └── ApiError                  Runware answered with an error (code, message, HTTP status)
        ├── AuthError             401/403 or an …ApiKey… code: stops the run
        ├── CreditsError          402 or a …Credits/Balance/Quota… code: stops the run
        ├── RequestRejected       4xx validation / conflict: the request itself is wrong
        ├── SafetyError           content policy: the prompt or image was refused
        ├── NotFoundError         getResponse does not know the taskUUID
        └── TransientError        safe to retry: connection, timeout, 408, 429, 5xx, provider
            └── RateLimited       429 (carries Retry-After when the server sent one)

Inside a run a failed cell is data (a result with an error code), never an exception that
unwinds the run; only AuthError and CreditsError stop it.
"""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """An expected failure: the entry point prints its message and exits 1."""


class ConfigError(PipelineError):
    """A sweep file, override or config value that cannot be used."""


class UnknownModel(ConfigError):
    """A model AIR that no entry of the registry (pipeline/models) has; the message lists them."""


class ValidationFailed(PipelineError):
    """One or more expanded requests break the schema; `problems` holds every one."""

    def __init__(self, problems: list[str], total: int | None = None) -> None:
        self.problems = problems
        count = total if total is not None else len(problems)
        super().__init__(f"{count} problem(s) found; nothing was sent:\n" + "\n".join(problems))


class BudgetExceeded(PipelineError):
    """The plan's estimated cost is over `budget.max_usd`."""


class SelectError(PipelineError):
    """A reproduce selection that cannot be read or selects nothing."""


class ApiError(PipelineError):
    """An error answered by the Runware API (or by a transport failure on the way)."""

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        code: str = "",
        status: int | None = None,
        task_uuid: str | None = None,
        parameter: str | list[str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        self.code = code
        self.status = status
        self.task_uuid = task_uuid
        self.parameter = parameter
        self.body = body or {}
        super().__init__(message)


class AuthError(ApiError):
    """The API key is missing, wrong or lacks permission; the run stops."""


class CreditsError(ApiError):
    """The account has no credits left; the run stops."""


class RequestRejected(ApiError):
    """The server refused the request as invalid; retrying cannot help."""


class SafetyError(ApiError):
    """The request or its output was refused by a content policy."""


class NotFoundError(ApiError):
    """The server does not know the task (e.g. getResponse on an unknown taskUUID)."""


class TransientError(ApiError):
    """A failure that is safe to retry (connection, timeout, 408, 429, 5xx, provider)."""

    retryable = True


class RateLimited(TransientError):
    """HTTP 429; `retry_after` holds the server's Retry-After in seconds, if any."""

    def __init__(self, message: str, *, retry_after: float | None = None, **kw: Any) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
