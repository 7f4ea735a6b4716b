"""Each lab's answer key (``labNN.py``): the references that are not the solution notebook's own
functions, and the catalogue of plausible mistakes with the hint that names each one.

Instructor-only: the student release leaves ``labkit.grading`` out, so no worker and no student
can import these. See docs/writing-a-check.md for how a check and its answer key fit together.
"""
