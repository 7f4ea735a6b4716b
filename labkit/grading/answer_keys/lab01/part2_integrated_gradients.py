"""Placeholder."""

from labkit.grading.answer_keys.lab01.key import KEY  # noqa: F401
