"""The orchwf-worker daemon: a prefork supervisor and the worker processes it forks."""
