"""ipywidgets explorers, one module per lab: ``attribution`` (lab 01), ``tracing`` (lab 02)."""
