"""What the loop saves annotators: effort accounting (pure) and per-project reports."""
