"""Tamper evidence for the platform log: Merkle tree, signed checkpoints, verification."""
