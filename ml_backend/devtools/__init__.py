"""Development and demo tools: a local Label Studio, datasets, project setup."""
