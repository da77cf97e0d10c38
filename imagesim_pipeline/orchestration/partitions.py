"""Partitions: one dynamic partition per delivered level-12 ARD cell (``Z33-120020223133``)."""

from dagster import DynamicPartitionsDefinition

ard_cells = DynamicPartitionsDefinition(name="ard_cells")
