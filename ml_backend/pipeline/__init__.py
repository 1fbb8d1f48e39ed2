"""Predicting, ranking and pre-annotating tasks across the model families."""
