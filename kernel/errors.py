"""Re-export of the error hierarchy for kernel and gateway code."""

from aggregates.errors import (
    CapacityError,
    ConfigError,
    ConflictError,
    DomainRuleError,
    IdempotencyKeyReusedError,
    InvalidTransitionError,
    KernelError,
    NotFoundError,
    StepFailedError,
    ValidationError,
)

__all__ = [
    "CapacityError",
    "ConfigError",
    "ConflictError",
    "DomainRuleError",
    "IdempotencyKeyReusedError",
    "InvalidTransitionError",
    "KernelError",
    "NotFoundError",
    "StepFailedError",
    "ValidationError",
]
