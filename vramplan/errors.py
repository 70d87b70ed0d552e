"""The error tree. Every message is one or two plain sentences that say what is wrong and how
to fix it; the CLI maps each class to an exit code (see `exit_code`)."""

from __future__ import annotations

import re

# A parameter named in a BadInput message: {ctx}, {gpu_memory_utilization}; never a quoted value
# such as a user's '{x}' shown with !r.
_PARAM = re.compile(r"(?<!['\"])\{([a-z][a-z0-9_]*)\}(?!['\"])")
# Parameters whose CLI flag is not the keyword with dashes.
_CLI_FLAG = {"prices": "--price"}


class VramplanError(Exception):
    """Base of every error vramplan raises on purpose."""

    exit_code = 2

    def for_cli(self) -> str:
        """The message as the command line prints it."""
        return str(self)


class BadInput(VramplanError, ValueError):
    """A flag or argument value that cannot be used (exit 2).

    The message names each parameter by its Python keyword in braces, "{ctx} must be at least 1",
    because the same mistake reaches vramplan from two edges: str(e), what a caller of the Python
    API reads, says "ctx must be at least 1"; `for_cli()`, what the command line prints, says
    "--ctx must be at least 1". Inside f-strings the braces are doubled: f"{{ctx}} ...".
    """

    def __init__(self, message: str):
        super().__init__(message)
        self.template = message

    def __str__(self) -> str:
        return _PARAM.sub(lambda m: m[1], self.template)

    def for_cli(self) -> str:
        return _PARAM.sub(lambda m: cli_flag(m[1]), self.template)


def cli_flag(name: str) -> str:
    """The command-line flag of the keyword `name`: gpu_mem -> --gpu-mem."""
    return _CLI_FLAG.get(name, "--" + name.replace("_", "-"))


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
