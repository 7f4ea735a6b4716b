"""Token-level pictures: coloured text, per-method bars, deletion/insertion curves."""

__all__: list[str] = []
