"""Checkers for the notebooks' exercises, one module per lesson; `expect_error` for cells that show an error.

A checker returns None on the committed placeholder ("Not solved yet"), True on a right answer, and raises
`ExerciseError` (a VLMCourseError and an AssertionError) on a wrong one; vlm_course.exercises.check says how
they see what the model really did."""

from .check import ExerciseError
from .expect import expect_error

__all__ = ["ExerciseError", "expect_error"]
