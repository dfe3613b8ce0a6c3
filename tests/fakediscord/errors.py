"""Discord's error answers (what the fake sends back) and the exceptions the fake raises inside tests."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

PathPart = Union[str, int]


class DiscordAPIError(Exception):
    """Raised inside a REST handler; the server turns it into Discord's JSON error body."""

    def __init__(self, status: int, code: int, message: str, errors: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(f'{status} {code} {message}')
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> Dict[str, Any]:
        body: Dict[str, Any] = {'code': self.code, 'message': self.message}
        if self.errors is not None:
            body['errors'] = self.errors
        return body


def form_error(path: Sequence[PathPart], error_code: str, message: str) -> DiscordAPIError:
    """A 50035 "Invalid Form Body" error with Discord's nested ``errors`` object pointing at ``path``."""
    errors: Dict[str, Any] = {'_errors': [{'code': error_code, 'message': message}]}
    for part in reversed(list(path)):
        errors = {str(part): errors}
    return DiscordAPIError(400, 50035, 'Invalid Form Body', errors)


# Named constructors keep the numbers in one place and make handlers read like Discord's documentation.
def unauthorized() -> DiscordAPIError:
    return DiscordAPIError(401, 0, '401: Unauthorized')


def not_found_route() -> DiscordAPIError:
    return DiscordAPIError(404, 0, '404: Not Found')


def method_not_allowed() -> DiscordAPIError:
    return DiscordAPIError(405, 0, '405: Method Not Allowed')


def unknown_channel() -> DiscordAPIError:
    return DiscordAPIError(404, 10003, 'Unknown Channel')


def unknown_guild() -> DiscordAPIError:
    return DiscordAPIError(404, 10004, 'Unknown Guild')


def unknown_message() -> DiscordAPIError:
    return DiscordAPIError(404, 10008, 'Unknown Message')


def unknown_user() -> DiscordAPIError:
    return DiscordAPIError(404, 10013, 'Unknown User')


def unknown_webhook() -> DiscordAPIError:
    return DiscordAPIError(404, 10015, 'Unknown Webhook')


def unknown_interaction() -> DiscordAPIError:
    return DiscordAPIError(404, 10062, 'Unknown interaction')


def unknown_command() -> DiscordAPIError:
    return DiscordAPIError(404, 10063, 'Unknown application command')


def not_application_owner() -> DiscordAPIError:
    return DiscordAPIError(403, 20012, 'You are not authorized to perform this action on this application')


def entity_too_large() -> DiscordAPIError:
    return DiscordAPIError(413, 40005, 'Request entity too large')


def already_acknowledged() -> DiscordAPIError:
    return DiscordAPIError(400, 40060, 'Interaction has already been acknowledged.')


def missing_access() -> DiscordAPIError:
    return DiscordAPIError(403, 50001, 'Missing Access')


def not_message_author() -> DiscordAPIError:
    return DiscordAPIError(403, 50005, 'Cannot edit a message authored by another user')


def empty_message() -> DiscordAPIError:
    return DiscordAPIError(400, 50006, 'Cannot send an empty message')


def cannot_message_user() -> DiscordAPIError:
    return DiscordAPIError(403, 50007, 'Cannot send messages to this user')


def missing_permissions() -> DiscordAPIError:
    return DiscordAPIError(403, 50013, 'Missing Permissions')


def invalid_webhook_token() -> DiscordAPIError:
    return DiscordAPIError(401, 50027, 'Invalid Webhook Token')


def invalid_json() -> DiscordAPIError:
    return DiscordAPIError(400, 50109, 'The request body contains invalid JSON.')


# --- exceptions raised in the test, not sent over HTTP -------------------------------------------------


class FakeDiscordError(AssertionError):
    """Base of the fake's test-facing failures; an AssertionError so pytest reports it as a failed check."""


class FakeDiscordTimeout(FakeDiscordError):
    """A ``wait_*`` call ran out of time before its condition held."""


class CommandNotVisible(FakeDiscordError):
    """The member cannot see the command (Discord's client would hide it), so no interaction was created."""


class CommandNotFound(FakeDiscordError):
    """No command with that name (or subcommand path) was synced by the bot."""


class ComponentNotFound(FakeDiscordError):
    """The message holds no enabled component with that custom_id, so a user could not click it."""


class InteractionFailed(FakeDiscordError):
    """The bot did not acknowledge the interaction before the deadline ("This interaction failed")."""

