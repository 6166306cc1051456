"""Model references against a real registry: newest approved vs pinned; no approval, no run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from contourd.errors import ModelNotApprovedError, ModelNotFoundError
from daemon.cli import main
from daemon.cli.check import model_issues
from daemon.config import load_config
from model_store.approved import ApprovedModel
from model_store.registry import BUILTIN_DIR, ModelRegistry
from model_store.resolution import resolve_models as resolve_refs
from routing.engine import RouteMatch
from routing.rules import Rule

CONFIG = """\
node:
  data_dir: {data_dir}
rules:
  - name: newest
    model: body
  - name: pinned
    model: body@1.1.0
"""


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """A data folder with the built-in body 1.0.0 and a copy imported as 1.1.0, none approved."""
    data_dir = tmp_path / "var"
    package = tmp_path / "body-1.1.0"
    shutil.copytree(BUILTIN_DIR / "body", package)
    card = package / "model.yaml"
    card.write_text(card.read_text().replace("version: 1.0.0", "version: 1.1.0"))
    reg = ModelRegistry(data_dir)
    reg.import_package(package, by="physicist")
    assert [r.version for r in reg.list_models() if r.name == "body"] == ["1.1.0", "1.0.0"]
    return reg


def write_config(tmp_path: Path, registry: ModelRegistry) -> Path:
    path = tmp_path / "contourd.yaml"
    path.write_text(CONFIG.format(data_dir=registry.data_dir), encoding="utf-8")
    return path


def match_for(model: str | list[str]) -> RouteMatch:
    return RouteMatch.from_rule(Rule(name="r", model=model))


def resolve_models(match: RouteMatch, registry: ModelRegistry) -> list[ApprovedModel]:
    """A rule's models as the worker resolves them."""
    return resolve_refs(registry, match.models, rule=match.rule)


def test_rule_with_no_approved_version_fails_check_with_line_and_approve_command(
    tmp_path: Path, registry: ModelRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, registry)
    issues = model_issues(load_config(path), path)
    assert [(i.mark.line if i.mark else None, i.path) for i in issues] == [
        (5, ("rules", 0, "model")),
        (7, ("rules", 1, "model")),
    ]
    assert "has no approved version" in issues[0].message
    assert "contourd models approve body" in issues[0].message
    assert "is 'imported', not approved" in issues[1].message
    assert main(["check", "-c", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:5:12: rules[0].model: rule 'newest' routes to model 'body'" in err


def test_unknown_model_fails_check(tmp_path: Path, registry: ModelRegistry) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"node: {{data_dir: {registry.data_dir}}}\nrules:\n"
                    "  - {name: x, model: [body, lungs@2.0.0]}\n")  # fmt: skip
    registry.approve("body", "1.0.0", by="physicist")
    issues = model_issues(load_config(path), path)
    assert len(issues) == 1
    assert issues[0].path == ("rules", 0, "model", 1)
    assert "no model named 'lungs'" in issues[0].message


def test_newest_approved_and_pinned_versions_resolve_differently(
    tmp_path: Path, registry: ModelRegistry, capsys: pytest.CaptureFixture[str]
) -> None:
    registry.approve("body", "1.0.0", by="physicist")
    # only 1.0.0 approved: the unpinned rule runs it, the rule pinned to 1.1.0 cannot run
    assert [m.version for m in resolve_models(match_for("body"), registry)] == ["1.0.0"]
    with pytest.raises(ModelNotApprovedError, match=r"rule 'r' routes to model 'body@1.1.0'.*"
                       r"contourd models approve body 1.1.0"):  # fmt: skip
        resolve_models(match_for("body@1.1.0"), registry)
    path = write_config(tmp_path, registry)
    assert [i.path for i in model_issues(load_config(path), path)] == [("rules", 1, "model")]

    registry.approve("body", "1.1.0", by="physicist")
    # now the newest approved is 1.1.0; a rule pinned to 1.0.0 keeps 1.0.0
    assert [m.version for m in resolve_models(match_for("body"), registry)] == ["1.1.0"]
    assert [m.version for m in resolve_models(match_for("body@1.0.0"), registry)] == ["1.0.0"]
    assert model_issues(load_config(path), path) == []
    assert main(["check", "-c", str(path)]) == 0
    assert "OK:" in capsys.readouterr().out


def test_list_of_models_resolves_in_rule_order(tmp_path: Path, registry: ModelRegistry) -> None:
    package = tmp_path / "outline"
    shutil.copytree(BUILTIN_DIR / "body", package)
    card = package / "model.yaml"
    card.write_text(card.read_text().replace("name: body", "name: outline"))
    registry.import_package(package, by="physicist")
    registry.approve("outline", "1.0.0", by="physicist")
    registry.approve("body", "1.0.0", by="physicist")
    models = resolve_models(match_for(["outline", "body"]), registry)
    assert [(m.name, m.version) for m in models] == [("outline", "1.0.0"), ("body", "1.0.0")]
    with pytest.raises(ModelNotFoundError, match="rule 'r' routes to model 'nobody'"):
        resolve_models(match_for(["body", "nobody"]), registry)


def test_missing_data_folder_is_reported_not_created(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("node: {data_dir: absent}\nrules:\n  - {name: x, model: body}\n")
    issues = model_issues(load_config(path), path)
    assert len(issues) == 1 and "does not exist" in issues[0].message
    assert not (tmp_path / "absent").exists()
