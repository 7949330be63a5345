"""The errors of the shop, raised by domain and state code and mapped to HTTP at the boundary.

    StatelabError
     ├── MalformedRequest      a request missing something it must carry (400)
     ├── InvalidInput          a request that breaks a rule (422)
     │    └── LimitExceeded    a configured limit: cart size, message length (422)
     ├── NotAuthenticated      no valid session or token (401)
     ├── Forbidden             authenticated, but not allowed: CSRF, origin (403)
     ├── NotFound              no such thing, or not yours (404)
     ├── Conflict              the current state forbids it (409)
     │    ├── InsufficientFunds
     │    ├── AlreadyExists
     │    └── EmptyCart
     ├── IdempotencyMismatch   the same Idempotency-Key with another body (422)
     ├── RateLimited           too many attempts; carries retry_after (429)
     └── Unavailable           a store is down; carries retry_after (503)

``web/problems.py`` holds the one table from these to problem+json and status codes.
"""

from __future__ import annotations


class StatelabError(Exception):
    """Base of every error the shop raises on purpose."""

    title = "Error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class MalformedRequest(StatelabError):
    title = "Bad request"


class InvalidInput(StatelabError):
    title = "Invalid input"


class LimitExceeded(InvalidInput):
    title = "Limit exceeded"


class NotAuthenticated(StatelabError):
    title = "Not authenticated"


class Forbidden(StatelabError):
    title = "Forbidden"


class NotFound(StatelabError):
    title = "Not found"


class Conflict(StatelabError):
    title = "Conflict"


class InsufficientFunds(Conflict):
    title = "Insufficient funds"


class AlreadyExists(Conflict):
    title = "Already exists"


class EmptyCart(Conflict):
    title = "Empty cart"


class IdempotencyMismatch(StatelabError):
    title = "Idempotency-Key reused"


class RateLimited(StatelabError):
    title = "Too many requests"

    def __init__(self, detail: str, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = max(1, retry_after)


class Unavailable(StatelabError):
    title = "Service unavailable"

    def __init__(self, detail: str, retry_after: int = 1) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
