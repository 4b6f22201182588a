"""Every error a user can cause, each with a message that says what was wrong and what to do.

Catch `VLMCourseError` to handle them all. Subclasses also derive from the built-in exception
a Python programmer would expect (ValueError, FileNotFoundError, ...), so existing handlers work.
"""


class VLMCourseError(Exception):
    """Base class: something the user can fix. The message says what and how."""


class ImageError(VLMCourseError, ValueError):
    """An image could not be loaded: missing file, not an image, truncated, too large, bad URL."""


class MessagesError(VLMCourseError, ValueError):
    """A conversation is malformed: wrong roles, plain-string content, images not matching placeholders."""


class ModelNotFoundError(VLMCourseError, OSError):
    """A model id or directory could not be found or reached (no network, typo, missing files)."""


class MissingExtraError(VLMCourseError, ImportError):
    """An optional dependency is not installed; the message names the pip extra to install."""


class BackendError(VLMCourseError, ValueError):
    """An attention backend or quantization method is unknown or unavailable on this machine."""


class GenerationError(VLMCourseError, RuntimeError):
    """Generation failed or was given options out of range (max_new_tokens, temperature, ...)."""


class GenerationTimeout(GenerationError, TimeoutError):
    """A stream waited longer than its timeout for the next text from generate."""


def missing_extra(package: str, extra: str) -> MissingExtraError:
    """The error to raise when an optional `package` is needed: says which extra installs it."""
    return MissingExtraError(
        f"This feature needs the optional package '{package}', which is not installed. "
        f"Install it with: pip install 'vlm-course[{extra}]'  (or: pip install {package})"
    )
