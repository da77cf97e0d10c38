"""Partitions: one dynamic partition per delivered level-12 ARD cell (``Z33-120020223133``)."""

from dagster import DynamicPartitionsDefinition, Failure

from imagesim_pipeline.ard.grid import ArdCell, GridError

ARD_CELLS = "ard_cells"  # the partitions definition's name, for the instance's dynamic-partition calls
ard_cells = DynamicPartitionsDefinition(name=ARD_CELLS)


def registered_cell(context, key: str | None = None) -> ArdCell:
    """The cell of a per-cell step (``key``, default the run's partition), failing with one line when it is
    not a registered partition or not a cell id (``dagster job execute`` does not check either)."""
    key = key or context.partition_key
    if not context.instance.has_dynamic_partition(ARD_CELLS, key):
        raise Failure(allow_retries=False, description=(
            f"{key!r} is not a registered cell (a partition of ard_cells): register delivered cells with "
            "`imagesim discover` (the delivery sensor does it too), then run the cell again"))
    try:
        return ArdCell.parse(key)
    except GridError as exc:
        raise Failure(allow_retries=False, description=f"partition {key!r} is not a cell id: {exc}") from None
