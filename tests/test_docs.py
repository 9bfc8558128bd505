"""Every setting is documented where users look for it."""

from __future__ import annotations

import re

import pytest

from services.settings import REPO_ROOT, Settings


@pytest.mark.parametrize("name", sorted(n.upper() for n in Settings.model_fields))
def test_setting_is_documented(name: str) -> None:
    example = (REPO_ROOT / ".env.example").read_text()
    readme = (REPO_ROOT / "README.md").read_text()
    assert re.search(rf"^{name}=", example, re.M), f"{name} missing from .env.example"
    assert f"| `{name}` |" in readme, f"{name} missing from the README's configuration table"


def test_procfile_starts_the_service_with_python_m_api() -> None:
    assert (REPO_ROOT / "Procfile").read_text().strip() == "web: python -m api"


def test_the_render_blueprint_deploys_with_authentication_on() -> None:
    blueprint = (REPO_ROOT / "render.yaml").read_text()
    assert re.search(r"- key: AUTH_MODE\n\s+value: api_key\n", blueprint)
    for key in ("API_KEYS", "ADMIN_API_KEYS"):
        assert re.search(rf"- key: {key}\n\s+generateValue: true\n", blueprint), key


def test_every_bench_command_in_the_docs_exists() -> None:
    docs = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    for doc in docs:
        for module in re.findall(r"python -m (bench(?:\.\w+)?)", doc.read_text()):
            path = REPO_ROOT.joinpath(*module.split("."))
            found = path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()
            assert found, f"{doc.name} names python -m {module}, which does not exist"
