"""State stores: where instances, steps and events live."""

from .base import StateManager, normalize_filters, check_page
from .memory import InMemoryStateManager

__all__ = ["StateManager", "InMemoryStateManager", "normalize_filters", "check_page"]
