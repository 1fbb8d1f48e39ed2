"""Data quality: suspected label errors, near-duplicates and find similar."""
