"""The NetworkElement subsystem (virtual-router provider): guest networks on libvirt hosts."""

from subsystems.networkelement.element import NetworkElement, make_networkelement

__all__ = ["NetworkElement", "make_networkelement"]
