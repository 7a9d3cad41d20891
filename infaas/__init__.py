"""infaas: automated, model-less inference serving as an event-driven Kafka pipeline."""

__version__ = "0.1.0"
