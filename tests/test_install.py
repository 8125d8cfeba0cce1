"""The install lines: each extra brings exactly one TensorFlow distribution, and none without one.

tensorflow-cpu and tensorflow both install the `tensorflow` package; two in one environment
overwrite each other's files. The first tests read pyproject.toml's requirement markers
with `packaging` (what pip evaluates); the last asks pip itself to resolve `.[gpu]` against
the registry (`pip install --dry-run --report`). That one reads package metadata over the
network (measured 15-35 s here), so it runs where VECSEARCH_CHECK_INSTALL=1 (.ci/run sets it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
TF_DISTRIBUTIONS = {
    "tensorflow",
    "tensorflow-cpu",
    "tensorflow-intel",
    "tensorflow-macos",
    "tensorflow-aarch64",
    "tf-nightly",
    "tf-nightly-cpu",
}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _requirements(extras: set[str], machine: str, system: str = "Linux") -> list[Requirement]:
    """What pip would install for `vecsearch[extras]` on that machine: base plus the extras' lines whose markers hold."""
    project = _project()
    env = default_environment() | {"platform_machine": machine, "platform_system": system, "sys_platform": system.lower()}
    lines = list(project["dependencies"]) + [r for e in sorted(extras) for r in project["optional-dependencies"][e]]
    reqs = [Requirement(line) for line in lines]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env | {"extra": ""})]


def _tensorflows(extras: set[str], machine: str) -> list[str]:
    return sorted(
        f"{canonicalize_name(r.name)}{sorted(r.extras) or ''}"
        for r in _requirements(extras, machine)
        if canonicalize_name(r.name) in TF_DISTRIBUTIONS
    )


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_the_base_install_has_no_tensorflow(machine):
    assert _tensorflows(set(), machine) == []
    assert "keras" in {canonicalize_name(r.name) for r in _requirements(set(), machine)}


def test_each_extra_brings_exactly_one_tensorflow_on_x86_64():
    # The `tensorflow` distribution, not tensorflow-cpu: keras-hub's tensorflow-text (the `hub` extra)
    # requires `tensorflow`, so tensorflow-cpu here would be a second one beside it.
    assert _tensorflows({"cpu"}, "x86_64") == ["tensorflow"]
    assert _tensorflows({"gpu"}, "x86_64") == ["tensorflow['and-cuda']"]
    assert _tensorflows({"dev"}, "x86_64") == ["tensorflow"]  # what .ci/run installs: a CPU backend
    for extra in ("server", "plot", "parquet", "hub"):
        assert _tensorflows({extra}, "x86_64") == []


def test_each_extra_brings_exactly_one_tensorflow_on_arm():
    assert _tensorflows({"cpu"}, "aarch64") == ["tensorflow"]
    assert _tensorflows({"dev"}, "aarch64") == ["tensorflow"]
    assert _tensorflows({"gpu"}, "aarch64") == ["tensorflow['and-cuda']"]


def test_no_backend_installed_names_the_install_lines():
    """Keras on a backend that is not installed (JAX here): one sentence naming the lines, no traceback."""
    import importlib.util

    if importlib.util.find_spec("jax") is not None:
        pytest.skip("jax is installed here")
    code = "from vecsearch.backbones import import_keras; import_keras()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ | {"KERAS_BACKEND": "jax"})
    assert r.returncode != 0
    from vecsearch.extras import install_line

    assert "VecsearchError" in r.stderr and install_line("cpu") in r.stderr
    assert install_line("gpu") in r.stderr and "KERAS_BACKEND=torch" in r.stderr


def test_the_cli_says_it_without_a_traceback(tmp_path):
    import importlib.util

    if importlib.util.find_spec("jax") is not None:
        pytest.skip("jax is installed here")
    (tmp_path / "a.png").write_bytes(b"")  # anything: the backend is missing before a file is read
    code = "from vecsearch.cli import app; app(prog_name='vecsearch')"
    r = subprocess.run(
        [sys.executable, "-c", code, "index", str(tmp_path), "--index", str(tmp_path / "ix")],
        capture_output=True,
        text=True,
        env=os.environ | {"KERAS_BACKEND": "jax"},
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert f"-e '{ROOT}[cpu]'" in r.stderr  # run from this checkout


@pytest.mark.skipif(
    os.environ.get("VECSEARCH_CHECK_INSTALL") != "1",
    reason="asks the package registry (15-35 s); .ci/run sets VECSEARCH_CHECK_INSTALL=1",
)
@pytest.mark.parametrize("extras", ["gpu", "cpu,hub", "gpu,hub"])
def test_pip_resolves_the_gpu_extra_to_one_tensorflow_with_cuda(tmp_path, extras):
    """pip's own resolution: `[gpu]` brings tensorflow with the CUDA libraries, and keras-hub (whose
    tensorflow-text requires the `tensorflow` distribution) adds no second TensorFlow to either extra."""
    report = tmp_path / "report.json"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--no-build-isolation",
            "-q",
            "--report",
            str(report),
            f"{ROOT}[{extras}]",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    installed = {canonicalize_name(i["metadata"]["name"]) for i in json.loads(report.read_text())["install"]}
    assert installed & TF_DISTRIBUTIONS == {"tensorflow"}
    if "gpu" in extras:
        assert any(name.startswith("nvidia-cudnn") for name in installed)  # the CUDA libraries come with it
    if "hub" in extras:
        assert {"keras-hub", "tensorflow-text"} <= installed


# -- the install lines the messages give ------------------------------------------------------------
def test_install_lines_name_what_works_where_vecsearch_came_from(tmp_path):
    """`pip install 'vecsearch[plot]'` fails ("No matching distribution": the name is not on the
    package index) and would install someone else's package if the name were taken."""
    from vecsearch.extras import install_line, pip_target

    # From this checkout (the tests run from one): editable, by its absolute path.
    assert install_line("plot") == f"pip install -e '{ROOT}[plot]'"
    assert pip_target("plot", checkout=Path("/src/my vecsearch")) == "-e '/src/my vecsearch[plot]'"
    # Installed by path (PEP 610 direct_url.json): that folder or wheel, with the extra.
    wheel = tmp_path / "vecsearch-0.2.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    assert pip_target("parquet", direct_url={"url": wheel.as_uri(), "archive_info": {}}) == f"'{wheel}[parquet]'"
    assert pip_target("plot", direct_url={"url": tmp_path.as_uri(), "dir_info": {"editable": True}}) == f"-e '{tmp_path}[plot]'"
    # From a repository: the same commit; from a URL: that URL.
    vcs = {"url": "https://example.org/vecsearch.git", "vcs_info": {"vcs": "git", "commit_id": "abc123"}}
    assert pip_target("plot", direct_url=vcs) == "'vecsearch[plot] @ git+https://example.org/vecsearch.git@abc123'"
    # Anything else (an index, or a wheel deleted since): the extra's own requirements, which always work.
    gone = {"url": (tmp_path / "gone.whl").as_uri(), "archive_info": {}}
    for origin in (None, gone):
        assert pip_target("plot", direct_url=origin) == "'matplotlib>=3.8'"
        assert pip_target("server", direct_url=origin).split() == [
            "'fastapi>=0.110'",
            "'uvicorn>=0.29'",
            "'python-multipart>=0.0.9'",
            "'fastapi-offline>=1.7'",
            "'prometheus-client>=0.20'",
        ]
        assert pip_target("client", direct_url=origin) == "'httpx>=0.27'"
        assert pip_target("cpu", direct_url=origin) == "'tensorflow>=2.16'"
        assert pip_target("hub", direct_url=origin) == "'keras-hub>=0.32'"
    for extra in ("plot", "server", "client", "parquet", "heif", "ray", "cpu", "gpu", "hub"):
        assert "'vecsearch[" not in install_line(extra) and extra in install_line(extra)
