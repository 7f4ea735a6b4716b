"""ipywidgets explorers, one module per lab: ``attribution`` (lab 01), ``tracing`` (lab 02).
``display`` makes a saved notebook show an explorer's first picture."""
