"""The add-on's panels (draw only)."""
