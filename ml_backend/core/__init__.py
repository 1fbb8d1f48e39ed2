"""Settings, errors, the model store, image fetching and the small shared pieces."""
