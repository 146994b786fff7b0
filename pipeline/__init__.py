"""cogflow's data layer: plain Python, importable and testable without Prefect or torch."""
