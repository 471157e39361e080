"""The NetworkGuru subsystem: network designs, VLAN, address and MAC proposals."""

from subsystems.networkguru.guru import NetworkGuru, make_networkguru

__all__ = ["NetworkGuru", "make_networkguru"]
