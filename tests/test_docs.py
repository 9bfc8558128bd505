"""Every setting is documented where users look for it."""

from __future__ import annotations

import re

import pytest

from api.app import API_PREFIX, create_app
from api.errors import error_codes
from services.core.settings import REPO_ROOT, Settings


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


API_DOC = REPO_ROOT / "docs" / "api.md"


def _operations() -> list[str]:
    """Every route of the OpenAPI document as docs/api.md names it: `METHOD /path`, relative
    to /api/v1, and the WebSocket as `WS /path`."""
    spec = create_app(Settings(_env_file=None)).openapi()
    named = [
        f"{method.upper()} {path.removeprefix(API_PREFIX)}"
        for path, item in spec["paths"].items()
        for method in item
    ]
    return [*named, f"WS {spec['x-websocket']['path'].removeprefix(API_PREFIX)}"]


@pytest.mark.parametrize("operation", _operations())
def test_every_route_is_in_the_api_reference(operation: str) -> None:
    assert f"`{operation}`" in API_DOC.read_text(), f"{operation} missing from docs/api.md"


@pytest.mark.parametrize("code", error_codes())
def test_every_error_code_is_in_the_api_reference(code: str) -> None:
    rows = re.findall(r"^\| [^|]+ \| `([a-z_]+)` \|", API_DOC.read_text(), re.M)
    assert code in rows, f"{code} missing from the error table of docs/api.md"


def test_the_api_reference_names_only_real_settings() -> None:
    named = set(re.findall(r"`([A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+)`", API_DOC.read_text()))
    assert named, "docs/api.md names no setting"
    assert named <= {n.upper() for n in Settings.model_fields}, named


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize(
    "page", ["README.md", *sorted(f"docs/{p.name}" for p in (REPO_ROOT / "docs").glob("*.md"))]
)
def test_links_between_pages_resolve(page: str) -> None:
    source = REPO_ROOT / page
    for target, anchor in re.findall(r"\]\(([^)#\s:]*)(?:#([^)\s]+))?\)", source.read_text()):
        linked = (source.parent / target).resolve() if target else source
        assert linked.is_file(), f"{page}: no file {target}"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
            assert anchor in {_slug(h) for h in headings}, f"{page}: no #{anchor} in {target}"


def test_every_bench_command_in_the_docs_exists() -> None:
    docs = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
    for doc in docs:
        for module in re.findall(r"python -m (bench(?:\.\w+)?)", doc.read_text()):
            path = REPO_ROOT.joinpath(*module.split("."))
            found = path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()
            assert found, f"{doc.name} names python -m {module}, which does not exist"
