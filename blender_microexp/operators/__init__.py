"""The add-on's operators, one per module."""
