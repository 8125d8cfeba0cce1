"""Optional dependencies: which pip extra brings which module, and the check that names it.

A feature behind an extra calls `require_extra` before any work, so a missing module is one
line with the exact install command, not a traceback after half the job is done (a
classifier saved, then `--plot` failing on matplotlib).
"""

from __future__ import annotations

import importlib

from .errors import MissingExtraError

EXTRAS: dict[str, tuple[str, ...]] = {
    "plot": ("matplotlib",),
    "server": ("fastapi", "uvicorn", "python_multipart|multipart", "fastapi_offline"),
    "parquet": ("pyarrow", "pyarrow.parquet"),
    "ray": ("ray", "ray.data"),
    "heif": ("pillow_heif",),
}
"""The modules each extra of pyproject.toml provides (import names; `a|b`: either will do,
as python-multipart is `python_multipart` since 0.0.13 and `multipart` before)."""


def install_line(extra: str) -> str:
    """The command that installs an extra, quoted for every shell (`pip install 'vecsearch[plot]'`)."""
    return f"pip install 'vecsearch[{extra}]'"


def require_extra(extra: str, modules: tuple[str, ...] | None = None, *, needed_for: str | None = None) -> None:
    """Import the modules of `extra` (default: all it provides), or raise MissingExtraError with the install line.

    Importing, rather than looking the module up, also catches a broken install.
    `needed_for` names the feature in the message (`--plot`, `Parquet`, `the server`).
    """
    for names in modules if modules is not None else EXTRAS[extra]:
        error = None
        for name in names.split("|"):
            try:
                importlib.import_module(name)
                break
            except ImportError as e:
                error = error or e
        else:
            missing = error.name or names.split("|")[0]
            what = needed_for or f"the {extra} extra"
            raise MissingExtraError(f"{what} needs {missing}, which is not installed: {install_line(extra)}",
                                    extra, missing)
