"""Why a console request was refused, in words, with its HTTP status and WebSocket close code."""

from services.framework.wire import CommandRefusedError

# the platform's refusal codes (the intake's) as HTTP statuses
_STATUS = {"invalid": 400, "unauthenticated": 401, "forbidden": 403, "not_found": 404,
           "conflict": 410, "gone": 410, "busy": 429, "unavailable": 503}


class Refusal(Exception):
    """A console request refused: `message` is what the user reads."""

    def __init__(self, code: str, message: str, *, field: str | None = None,
                 by_platform: bool = False) -> None:
        super().__init__(message)
        self.code, self.message, self.field = code, message, field
        self.by_platform = by_platform  # then the platform has audited it already

    @property
    def status(self) -> int:
        """The HTTP status of the refusal."""
        return _STATUS.get(self.code, 400)

    @property
    def close_code(self) -> int:
        """The WebSocket close code: 4000 + the HTTP status (4410: the link was used, ...)."""
        return 4000 + self.status

    def body(self) -> dict[str, str]:
        """The JSON body (and the WebSocket's last message)."""
        body = {"error": self.message, "code": self.code}
        if self.field:
            body["field"] = self.field
        return body

    @classmethod
    def of_command(cls, e: CommandRefusedError) -> "Refusal":
        """The platform's refusal of `console.redeem`, as the user should read it."""
        if e.code == "unavailable":
            return cls("unavailable", "the platform did not answer; try again in a moment")
        if e.code == "invalid":  # the platform's rule: this link opens nothing any more
            return cls("gone", e.message, field=e.field, by_platform=True)
        return cls(e.code, e.message, field=e.field, by_platform=True)
