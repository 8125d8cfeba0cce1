"""Optional dependencies: which pip extra brings which module, and the check that names it.

A feature behind an extra calls `require_extra` before any work, so a missing module is one
line with the exact install command, not a traceback after half the job is done (a
classifier saved, then `--plot` failing on matplotlib).
"""

from __future__ import annotations

import functools
import importlib
import json
import re
import shlex
from importlib import metadata
from pathlib import Path
from urllib.parse import urlsplit

from .errors import MissingExtraError

EXTRAS: dict[str, tuple[str, ...]] = {
    "plot": ("matplotlib",),
    "client": ("httpx",),
    "server": ("fastapi", "uvicorn", "python_multipart|multipart", "fastapi_offline", "prometheus_client"),
    "parquet": ("pyarrow", "pyarrow.parquet"),
    "ray": ("ray", "ray.data", "ray.serve"),
    "heif": ("pillow_heif",),
    "hub": ("keras_hub",),
}
"""The modules each extra of pyproject.toml provides (import names; `a|b`: either will do,
as python-multipart is `python_multipart` since 0.0.13 and `multipart` before)."""


def install_line(extra: str) -> str:
    """The pip command that installs `extra` for this vecsearch, quoted for every shell (see `pip_target`)."""
    return f"pip install {_this_target(extra)}"


@functools.lru_cache(maxsize=None)
def _this_target(extra: str) -> str:
    root = Path(__file__).resolve().parent.parent
    return pip_target(extra, checkout=root if _is_checkout(root) else None, direct_url=_direct_url())


def pip_target(extra: str, *, checkout: Path | None = None, direct_url: dict | None = None) -> str:
    """What follows `pip install` to add `extra` to a vecsearch that came from where it did.

    The name `vecsearch` is not on the package index (and someone else could register it),
    so `'vecsearch[plot]'` is never the answer. Running from a source `checkout` (editable,
    or on PYTHONPATH): `-e '/its/path[plot]'`. Installed from a path or URL (PEP 610's
    `direct_url.json`): that wheel, folder or URL with the extra. Otherwise the extra's own
    requirements (`'matplotlib>=3.8'`), which always work.
    """
    if checkout is not None:
        return "-e " + shlex.quote(f"{checkout}[{extra}]")
    direct_url = direct_url or {}
    url = direct_url.get("url")
    if isinstance(url, str) and url.startswith("file://"):
        from urllib.request import url2pathname  # imported here: urllib.request pulls in http and ssl

        path = Path(url2pathname(urlsplit(url).path))
        if path.exists():  # else (a wheel deleted since) the requirements below
            editable = "-e " if (direct_url.get("dir_info") or {}).get("editable") else ""
            return editable + shlex.quote(f"{path}[{extra}]")
    elif isinstance(url, str) and url:
        vcs = direct_url.get("vcs_info")
        if isinstance(vcs, dict):  # the same commit: vecsearch[plot] @ git+https://...@<commit>
            url = f"{vcs.get('vcs', 'git')}+{url}@{vcs.get('commit_id') or vcs.get('requested_revision')}"
        return shlex.quote(f"vecsearch[{extra}] @ {url}")
    return " ".join(shlex.quote(r) for r in extra_requirements(extra))


def _is_checkout(root: Path) -> bool:
    """Whether `root` (the folder above the package) is vecsearch's own source tree."""
    try:
        text = (root / "pyproject.toml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return re.search(r'^name\s*=\s*"vecsearch"', text, re.M) is not None


def _direct_url() -> dict | None:
    """The installed distribution's `direct_url.json` (PEP 610), or None (from an index, or not installed)."""
    try:
        data = json.loads(metadata.distribution("vecsearch").read_text("direct_url.json") or "null")
    except (metadata.PackageNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def extra_requirements(extra: str) -> list[str]:
    """The requirements `extra` adds on this machine (`matplotlib>=3.8`), from the installed metadata."""
    try:
        lines = metadata.requires("vecsearch") or []
    except metadata.PackageNotFoundError:
        lines = []
    out: list[str] = []
    for line in lines:
        req, _, marker = line.partition(";")
        if f'extra == "{extra}"' not in marker and f"extra == '{extra}'" not in marker:
            continue
        try:
            from packaging.markers import Marker

            if not Marker(marker).evaluate({"extra": extra}):
                continue
        except ImportError:  # no packaging (Keras needs it, so rare): the extra's first line, whatever its platform
            if out:
                continue
        out.append(req.strip().replace(" ", ""))
    # Not installed at all (no metadata): the import names, as pip spells them.
    return out or sorted({m.split("|")[0].split(".")[0].replace("_", "-") for m in EXTRAS.get(extra, (extra,))})


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
            assert error is not None  # no break: every name (at least one) raised
            missing = error.name or names.split("|")[0]
            what = needed_for or f"the {extra} extra"
            raise MissingExtraError(f"{what} needs {missing}, which is not installed: {install_line(extra)}", extra, missing)
