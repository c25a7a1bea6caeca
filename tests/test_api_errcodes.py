"""The error-code registry: every error a client can see is registered once with its wire code and status."""
from __future__ import annotations

import ast
import inspect
import json
from pathlib import Path

import pytest

from pullcache.api import errors
from pullcache.api.errors import ErrorCode, RegistryError

# The OCI spec's codes pullcache answers with (TAG_INVALID is the legacy Docker code the spec allows).
WIRE_CODES = {
    "BLOB_UNKNOWN", "BLOB_UPLOAD_INVALID", "BLOB_UPLOAD_UNKNOWN", "DIGEST_INVALID", "MANIFEST_BLOB_UNKNOWN",
    "MANIFEST_INVALID", "MANIFEST_UNKNOWN", "NAME_INVALID", "NAME_UNKNOWN", "SIZE_INVALID", "TAG_INVALID",
    "UNAUTHORIZED", "DENIED", "UNSUPPORTED", "TOOMANYREQUESTS", "UNAVAILABLE",
}
PACKAGE = Path(errors.__file__).resolve().parents[1]


def test_the_wire_codes_are_exactly_the_spec_codes_pullcache_uses() -> None:
    assert {kind.code for kind in errors.registered()} == WIRE_CODES


def test_every_registered_code_has_an_error_status_and_a_description() -> None:
    for kind in errors.registered():
        assert 400 <= kind.status <= 599, kind
        assert kind.description.strip(), kind


def test_every_module_level_descriptor_is_registered_under_its_own_name() -> None:
    declared = {name: value for name, value in vars(errors).items() if isinstance(value, ErrorCode)}
    assert {kind.name: kind for kind in errors.registered()} == declared


def test_distinct_statuses_are_distinct_descriptors() -> None:
    statuses = {kind.status for kind in errors.registered() if kind.code == "UNAVAILABLE"}
    assert statuses == {500, 502, 503, 504, 507}


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="BLOB_UNKNOWN"):
        errors.register("BLOB_UNKNOWN", "BLOB_UNKNOWN", 404, "again")


def test_the_status_comes_from_the_descriptor_alone() -> None:
    assert "status" not in inspect.signature(RegistryError).parameters
    with pytest.raises(TypeError):
        RegistryError(errors.UNAVAILABLE, "x", status=502)  # type: ignore[call-arg]


def test_an_error_renders_its_descriptor_code_and_status() -> None:
    response = errors.UPSTREAM_TIMEOUT.error("slow", detail={"upstream": "u"}).response()
    assert response.status == 504
    assert isinstance(response.body, bytes)
    assert json.loads(response.body) == {
        "errors": [{"code": "UNAVAILABLE", "message": "slow", "detail": {"upstream": "u"}}]}


def _calls_with_string_codes(path: Path) -> list[str]:
    """RegistryError(...) calls whose code is a string literal, or that pass status=, in one source file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "RegistryError"):
            continue
        string_code = bool(node.args) and isinstance(node.args[0], ast.Constant)
        if string_code or any(keyword.arg == "status" for keyword in node.keywords):
            found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return found


def test_no_call_site_passes_a_string_code_or_a_status() -> None:
    offenders = [site for path in sorted(PACKAGE.rglob("*.py")) for site in _calls_with_string_codes(path)]
    assert offenders == []
