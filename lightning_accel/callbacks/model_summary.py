"""The model summary printed at the start of a run, without FLOPs Lightning did not count."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import RichModelSummary
from lightning.pytorch.utilities.model_summary import get_formatted_model_size
from lightning.pytorch.utilities.model_summary import get_human_readable_count as readable
from rich import get_console
from rich.table import Table
from typing_extensions import override

# the columns Lightning's summary holds numbers in
NUMBER_COLUMNS = ("Params", "Params per Device", "FLOPs", "In sizes", "Out sizes")


class RunModelSummary(RichModelSummary):
    """Lightning's rich model summary, leaving out its FLOPs column and total where Lightning
    counted none. Lightning counts a model's FLOPs only by running its
    ``example_input_array``, and shows 0 for every layer of a model without one; the pack's
    speed monitor counts a training step's FLOPs and reports them with the MFU.

    Args:
        max_depth, **summarize_kwargs: as :class:`~lightning.pytorch.callbacks.RichModelSummary`
            (``header_style``).
    """

    def __init__(self, max_depth: int = 1, **summarize_kwargs: Any) -> None:
        if max_depth < -1:  # Lightning finds this only when it summarizes, once fitting starts
            raise ValueError(
                f"max_depth must be -1 (every layer), 0 (none) or more; got {max_depth}"
            )
        super().__init__(max_depth, **summarize_kwargs)

    @staticmethod
    @override
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = [c for c in summary_data if total_flops or c[0] != "FLOPs"]
        table = Table(header_style=summarize_kwargs.get("header_style", "bold magenta"))
        for name, _ in columns:
            justify = "right" if name in NUMBER_COLUMNS else "left"
            table.add_column(name, justify=justify, style="dim" if name == " " else None)
        for row in zip(*(values for _, values in columns), strict=True):
            table.add_row(*row)
        totals = {
            "Trainable params": readable(trainable_parameters),
            "Non-trainable params": readable(total_parameters - trainable_parameters),
            "Total params": readable(total_parameters),
            "Total estimated model params size (MB)": get_formatted_model_size(model_size),
            "Modules in train mode": total_training_modes["train"],
            "Modules in eval mode": total_training_modes["eval"],
        }
        if total_flops:
            totals["Total FLOPs"] = readable(total_flops)
        grid = Table.grid(expand=True)
        grid.add_column()
        for name, value in totals.items():
            grid.add_row(f"[bold]{name}[/]: {value}")
        console = get_console()
        console.print(table)
        console.print(grid)
