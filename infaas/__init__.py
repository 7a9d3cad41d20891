"""infaas: automated, model-less inference serving as an event-driven Kafka pipeline."""

__version__ = "0.1.0"

# Heavy entry points load on first use, so `import infaas` stays light.
_LAZY = {"register_model": "infaas.registration", "RegistrationReport": "infaas.registration",
         "RegistrationError": "infaas.registration"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'infaas' has no attribute {name!r}")
