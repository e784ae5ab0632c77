"""Families the project makes itself: ``demo`` (shipped), ``smol`` (built from a registry package) and synthetic real-shape families."""
