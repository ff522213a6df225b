"""environment.yml (and the workflow's conda env) pin exactly what pyproject.toml pins."""

import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def pyproject_requirements() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return set(project["dependencies"]) | set(project["optional-dependencies"]["dev"])


def conda_pip_requirements(path: Path) -> set[str]:
    env = yaml.safe_load(path.read_text())
    pip = [d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d]
    return set(pip[0])


def test_environment_yml_matches_pyproject():
    assert conda_pip_requirements(ROOT / "environment.yml") == pyproject_requirements()


def test_workflow_conda_env_matches_pyproject():
    assert conda_pip_requirements(ROOT / "workflow/envs/fipa.yaml") == pyproject_requirements()


def test_torch_pins_are_the_working_pair():
    reqs = pyproject_requirements()
    assert {"torch==2.14.1", "torchvision==0.29.1"} <= reqs


def test_environment_python_matches_requires_python():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    python = [d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python=")]
    assert python == ["python=3.11"] and project["requires-python"] == ">=3.11"
