"""fedgate core: configuration, namespace, auth, state store, CLI."""

__version__ = "0.1.0"
