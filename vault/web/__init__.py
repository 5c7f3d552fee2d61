"""Web blueprints: one module per blueprint, each with its forms."""
