"""User errors: a bad config value or a bad data file, reported as one short message, without a traceback.

A traceback helps whoever debugs the code; it hides the one line that matters from whoever typed a wrong path
or a batch size that does not divide. The code that *detects* a problem says which kind it is by the class it
raises (``ConfigError``, ``DataError``, ``MissingFileError``, ``ExistingPathError``, all ``UserError``s and
still ``ValueError`` / ``FileNotFoundError`` / ``FileExistsError`` for callers that catch those); the entry
points decide *how* it is shown, in one place: ``report_user_errors``. Anything else is a bug and keeps its
traceback, and ``HYDRA_FULL_ERROR=1`` shows the traceback of user errors too.

Two more kinds count as user errors without being raised here: a config value left at ``???``
(omegaconf's ``MissingMandatoryValue``) and a non-finite training loss (``FloatingPointError``, whose message
names the keys that help: the learning rate and gradient clipping).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from omegaconf.errors import MissingMandatoryValue


class UserError(Exception):
    """Base of the errors a user fixes by changing a config value or a data file (the message says how)."""


class ConfigError(UserError, ValueError):
    """A config value that cannot work; the message names the key (``data.batch_size``, ...)."""


class DataError(UserError, ValueError):
    """A data file that cannot be used (corrupt image, bad record, wrong mask size); the message names it."""


class MissingFileError(UserError, FileNotFoundError):
    """A configured file or folder that does not exist."""


class ExistingPathError(UserError, FileExistsError):
    """An output that would overwrite an earlier result."""


USER_ERRORS: tuple[type[BaseException], ...] = (UserError, MissingMandatoryValue, FloatingPointError)

# A DataLoader worker's exception comes back as "Caught X in DataLoader worker process N.\nOriginal Traceback
# ...\nmodule.X: message": the same class, with the worker's whole traceback as its message.
_WORKER_PREFIX = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")

F = TypeVar("F", bound=Callable[..., Any])


def find_user_error(error: BaseException) -> BaseException | None:
    """The user error ``error`` is or was caused by (Hydra's instantiate wraps what constructors raise)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, USER_ERRORS):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def user_error_message(error: BaseException, user_error: BaseException) -> str:
    """``Type: message``, with the config node Hydra was building when it failed, on one line."""
    message = str(user_error)
    if _WORKER_PREFIX.match(message):
        # Keep what the worker raised: the text after the last "...Type: " line of its traceback.
        name = type(user_error).__name__
        lines = [line for line in message.splitlines() if re.match(rf"^[\w.]*\b{name}: ", line)]
        message = lines[-1].split(f"{name}: ", 1)[1] if lines else message.splitlines()[-1]
    else:
        message = message.strip().splitlines()[0] if message.strip() else message
    where = re.search(r"^full_key: (\S+)", str(error), re.MULTILINE) if error is not user_error else None
    suffix = f" (while building config node {where.group(1)})" if where else ""
    return f"{type(user_error).__name__}: {message.strip()}{suffix}"


def _to_log_files(line: str) -> None:
    """Also into the run's log file (Hydra's ``<run dir>/train.log``), which the console line does not reach."""
    record = logging.LogRecord("oaml", logging.ERROR, __file__, 0, line, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def report_user_errors(task: F) -> F:
    """Decorate an entry point's task function: a user error ends the process with one line on stderr and
    exit status 1; any other exception (a bug) propagates with its traceback, and so does a user error when
    ``HYDRA_FULL_ERROR=1``. In a ``-m`` sweep the line is printed and the error still raised, so that Hydra's
    launcher marks that job failed and goes on with the others (exiting would end the whole sweep)."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as error:
            user_error = find_user_error(error)
            if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            line = f"Error: {user_error_message(error, user_error)}"
            print(line, file=sys.stderr)
            print("(HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            _to_log_files(line)
            if _in_multirun():
                raise  # Hydra records the job as failed, goes on with the next one and reports at the end
            sys.exit(1)

    return wrapper  # type: ignore[return-value]
