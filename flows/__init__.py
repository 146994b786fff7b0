"""Orchestration: Prefect flows over the plain functions in `pipeline/`, and the `cogflow` command."""
