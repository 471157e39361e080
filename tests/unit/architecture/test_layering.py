"""The import contracts (pyproject.toml, checked by `lint-imports` in CI) name modules one by one
where a rule has exceptions; these tests fail when a new module would escape such a list."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "contracts"]


def _contract(name_start: str) -> dict[str, object]:
    [found] = [c for c in CONTRACTS if str(c["name"]).startswith(name_start)]
    return found


def _children(package: str) -> set[str]:
    """The modules and packages directly inside a package of ours."""
    folder = ROOT / package.replace(".", "/")
    names = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    names |= {p.name for p in folder.iterdir() if (p / "__init__.py").is_file()}
    return {f"{package}.{n}" for n in names}


def test_the_kernel_contract_names_every_kernel_module_but_the_composition_root() -> None:
    listed = set(_contract("kernel imports aggregates only")["source_modules"])  # type: ignore[arg-type]
    assert listed == _children("kernel") - {"kernel.bootstrap"}


def test_the_services_contract_forbids_every_platform_aggregate() -> None:
    forbidden = set(_contract("services reach the platform")["forbidden_modules"])  # type: ignore[arg-type]
    aggregates = _children("aggregates") - {"aggregates.errors", "aggregates.base"}
    assert aggregates <= forbidden, aggregates - forbidden
    kernel = _children("kernel") - {"kernel.contracts", "kernel.settings", "kernel.store"}
    assert kernel <= forbidden, kernel - forbidden


def test_the_subsystems_contracts_name_every_plugin() -> None:
    plugins = set(_contract("no subsystem plugin imports another")["modules"])  # type: ignore[arg-type]
    shared = {"subsystems.base", "subsystems.registry", "subsystems.runner",
              "subsystems.libvirt"}
    assert plugins == _children("subsystems") - shared
    libvirt_users = set(_contract("libvirt is imported only")["source_modules"])  # type: ignore[arg-type]
    assert libvirt_users == {"aggregates", "kernel", "projections", "gateways", "services",
                             *(_children("subsystems") - {"subsystems.libvirt"})}
    forbidden = set(_contract("subsystems import the step contracts")["forbidden_modules"])  # type: ignore[arg-type]
    kernel = _children("kernel") - {"kernel.contracts", "kernel.steps"}
    assert kernel <= forbidden, kernel - forbidden


def test_the_projections_contract_keeps_them_off_the_engine() -> None:
    forbidden = set(_contract("projections import")["forbidden_modules"])  # type: ignore[arg-type]
    engine = {"kernel.bootstrap", "kernel.cloud", "kernel.commands", "kernel.effects",
              "kernel.operations", "kernel.unit_of_work"}
    assert engine <= forbidden
