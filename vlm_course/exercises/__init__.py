"""Checkers for the notebooks' exercises, one module per lesson; `expect_error` for cells that show an error."""

from .expect import expect_error

__all__ = ["expect_error"]
