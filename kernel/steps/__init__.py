"""Step contracts: the argument and result Structs of each subsystem's actions.

One module per subsystem. An argument Struct's tag is its step kind `<subsystem>.<action>`, so
`PlannedStep.of(args)` routes it. The kernel builds plans from these types and the plugins
decode them; neither imports the other.
"""
