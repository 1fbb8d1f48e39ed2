"""One package per model family: its model wrapper, caches, training and glue."""
