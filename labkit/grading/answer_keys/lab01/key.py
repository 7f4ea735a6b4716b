"""Lab 01's answer key (instructor-only): one ``KEY`` that every part's module adds to."""

from labkit.grading.answers import AnswerKey

KEY = AnswerKey("01")
