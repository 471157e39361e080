"""Test subsystems that exercise the engine: echo, sleep, flaky, silent and counter.

They are registered as built-in plugins, so `cloudkernel worker --subsystem echo` serves them.
"""
