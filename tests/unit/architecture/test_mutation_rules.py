"""The rule `make mutation` counts equivalent mutants by (scripts/mutation.py): a survivor is
wording only when it changes nothing but the text of strings that are messages."""

import ast
import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "mutation.py"


@pytest.fixture(scope="module")
def mutation() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_script", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def function(source: str, name: str = "f") -> ast.FunctionDef:
    """`source` as the body of a function named as mutmut names its copies."""
    body = "\n".join(f"    {line}" for line in source.splitlines())
    node = ast.parse(f"def {name}(self):\n{body}").body[0]
    assert isinstance(node, ast.FunctionDef)
    return node


@pytest.mark.parametrize(("original", "mutated"), [
    ("raise ValidationError('host name must not be empty')",
     "raise ValidationError('XXhost name must not be emptyXX')"),
    ("raise DomainRuleError(f'host {self.name}: no claim')",
     "raise DomainRuleError(f'host {self.name}: NO CLAIM')"),
    ("raise self._refuse('cancel maintenance')", "raise self._refuse('XXcancel maintenanceXX')"),
    ("self._require(S, 'be refused')", "self._require(S, 'BE REFUSED')"),
    ("return Refusal('full', retryable=True)", "return Refusal('XXfullXX', retryable=True)"),
])
def test_a_message_changed_only_in_its_text_is_wording(mutation: ModuleType, original: str,
                                                       mutated: str) -> None:
    assert mutation.wording_only(function(original, "f__mutmut_orig"),
                                 function(mutated, "f__mutmut_1"))


@pytest.mark.parametrize(("original", "mutated"), [
    # a string that is data, not a message
    ("return natural_id('host', name)", "return natural_id('XXhostXX', name)"),
    ("x = getattr(self, '_maintenance', None)", "x = getattr(self, 'XX_maintenanceXX', None)"),
    ("more = ''", "more = 'XXXX'"),
    # a message replaced or dropped is more than its wording
    ("raise ValidationError('no')", "raise ValidationError(None)"),
    ("raise ValidationError('no')", "raise ValidationError()"),
    # the text and something else
    ("raise X('a') if a > 1 else None", "raise X('XXaXX') if a >= 1 else None"),
    # nothing changed at all
    ("raise X('a')", "raise X('a')"),
])
def test_anything_else_is_not_wording(mutation: ModuleType, original: str,
                                      mutated: str) -> None:
    assert not mutation.wording_only(function(original, "f__mutmut_orig"),
                                     function(mutated, "f__mutmut_1"))


def test_the_strings_a_message_function_returns_are_wording(mutation: ModuleType) -> None:
    name = "xǁOperationǁ_why_not_ready"  # as mutmut names a method
    original = function("return 'the operation is stopping'", f"{name}__mutmut_orig")
    mutated = function("return 'XXthe operation is stoppingXX'", f"{name}__mutmut_3")
    assert mutation.wording_only(original, mutated)
    assert not mutation.wording_only(function("return 'stopping'", "x_status__mutmut_orig"),
                                     function("return 'XXstoppingXX'", "x_status__mutmut_3"))
