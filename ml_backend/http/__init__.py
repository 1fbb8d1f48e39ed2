"""The HTTP layer: Flask routes, the endpoints' behaviour, metrics. No torch here."""
