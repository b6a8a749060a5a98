"""Example apps shipped with orchwf (``orchwf demo`` runs the order pipeline)."""
