"""The error tree. Every message is one or two plain sentences that say what is wrong and how
to fix it; the CLI maps each class to an exit code (see `exit_code`)."""

from __future__ import annotations


class VramplanError(Exception):
    """Base of every error vramplan raises on purpose."""

    exit_code = 2


class BadInput(VramplanError, ValueError):
    """A flag or argument value that cannot be used (exit 2)."""


class ModelNotFound(BadInput):
    """MODEL is not a local path, a bundled id, a cached config or a Hub repo."""


class BadConfig(BadInput):
    """A config.json that is not JSON, lacks a key we need, or holds a value we cannot use."""


class UnknownGpu(BadInput):
    """A --gpu id that is not in the catalog."""


class EnvironmentProblem(VramplanError):
    """The machine lacks something: an optional extra, a driver, a GPU (exit 3)."""

    exit_code = 3


class MissingExtra(EnvironmentProblem, ImportError):
    """An optional dependency is not installed; the message names the pip command."""

    def __init__(self, extra: str, module: str):
        super().__init__(
            f"This needs the optional '{extra}' dependencies ({module} is not installed). "
            f"Install them with: pip install 'vramplan[{extra}]'"
        )
        self.extra = extra
        self.module = module


class DoesNotFit(VramplanError, RuntimeError):
    """Raised by `preflight` when the planned workload does not fit (exit 1)."""

    exit_code = 1

    def __init__(self, message: str, plan=None):
        super().__init__(message)
        self.plan = plan
