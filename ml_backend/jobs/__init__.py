"""Background jobs: the in-process and Redis + RQ queues, compute threads."""
