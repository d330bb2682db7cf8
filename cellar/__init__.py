"""Cellar's core: what the gateway, the engines and the offline tools all share."""

__version__ = "0.1.0"
