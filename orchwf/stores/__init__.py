"""State stores: where instances, steps and events live."""

from .base import StateManager, check_page, normalize_filters
from .memory import InMemoryStateManager

__all__ = ["StateManager", "InMemoryStateManager", "normalize_filters", "check_page"]
