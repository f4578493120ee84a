"""Error taxonomy.

Three kinds of failure reach an admission client, and they must never be confused:

- ``BadRequest``: the AdmissionReview itself is malformed (not JSON, wrong kind, no uid). The HTTP layer
  answers 400, because there is no review to answer.
- ``Denied``: the review is fine, the object is not. Answered with ``allowed: false`` and a message that says
  which field, what is wrong and how to fix it (HTTP 200, as the protocol requires).
- ``Internal``: a bug of ours. Answered as a denial with a short message and the uid echoed; the details go to
  the log, never a stack trace to the client.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class AdmissionError(Exception):
    pass


class BadRequest(AdmissionError):
    """The request is not a usable AdmissionReview."""


@dataclass
class Problem:
    """One thing wrong with an object: where, what, and how to fix it."""

    where: str
    what: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.where}: {self.what}"
        if self.fix:
            text += f" ({self.fix})"
        return text


@dataclass
class Denied(AdmissionError):
    problems: list[Problem] = field(default_factory=list)
    code: int = 422

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def message(self) -> str:
        if len(self.problems) == 1:
            return "llmaz-serverless: " + str(self.problems[0])
        return "llmaz-serverless: " + "; ".join(f"[{i + 1}] {p}" for i, p in enumerate(self.problems))

    @classmethod
    def one(cls, where: str, what: str, fix: str = "") -> "Denied":
        return cls([Problem(where, what, fix)])


class Internal(AdmissionError):
    """A defect in llmaz-serverless; the message is safe to show, details are logged."""
