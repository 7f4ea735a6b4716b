"""Grid pictures: ROME-style restoration heatmaps over (layer, position)."""

__all__: list[str] = []
