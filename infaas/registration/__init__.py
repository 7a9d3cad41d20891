"""Model registration: validation, the model repository, variant generation, profiling, the demo zoo.

`register_model` is the entry point (also `infaas.register_model` and `infaas register`).
"""

from .register import RegistrationReport, register_model
from .validate import RegistrationError

__all__ = ["RegistrationError", "RegistrationReport", "register_model"]
