"""Lab 03's answer key object and the signal a mistake raises when it does not apply."""

from labkit.grading.answers import AnswerKey

KEY = AnswerKey("03")


class NotThisProblem(ValueError):
    """A mistake that does not apply here (it would equal the right answer)."""
