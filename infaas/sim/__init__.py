"""The trace-driven simulator of infaas: the live system's policies, on simulated time."""
