"""Cloud operations as step plans: the commands admins and integrators run, and their effects.

Each module builds the plans of one family of operations (VMs, templates...) and the effects
that record what their steps did on the entities (`kernel.effects`). `CLOUD_COMMANDS` and
`CLOUD_EFFECTS` are what the composition root gives the operation engine.
"""
