"""Dagster definitions of the pipeline: assets, jobs, sensors, resources (a thin shell over the domain packages)."""
