"""CIAP library."""
