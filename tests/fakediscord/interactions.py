"""Interactions a test triggers as a user, and what the bot answered to them."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from .errors import InteractionFailed
from .models import MESSAGE_FLAG_EPHEMERAL, FakeAttachment, FakeChannel, FakeGuild, FakeMember, FakeMessage

if TYPE_CHECKING:
    from .server import FakeDiscord

INTERACTION_PING = 1
INTERACTION_APPLICATION_COMMAND = 2
INTERACTION_MESSAGE_COMPONENT = 3
INTERACTION_AUTOCOMPLETE = 4
INTERACTION_MODAL_SUBMIT = 5

RESPONSE_PONG = 1
RESPONSE_CHANNEL_MESSAGE = 4
RESPONSE_DEFERRED_CHANNEL_MESSAGE = 5
RESPONSE_DEFERRED_UPDATE_MESSAGE = 6
RESPONSE_UPDATE_MESSAGE = 7
RESPONSE_AUTOCOMPLETE_RESULT = 8
RESPONSE_MODAL = 9

RESPONSE_KINDS = {
    RESPONSE_PONG: 'pong',
    RESPONSE_CHANNEL_MESSAGE: 'message',
    RESPONSE_DEFERRED_CHANNEL_MESSAGE: 'deferred_message',
    RESPONSE_DEFERRED_UPDATE_MESSAGE: 'deferred_update',
    RESPONSE_UPDATE_MESSAGE: 'update_message',
    RESPONSE_AUTOCOMPLETE_RESULT: 'autocomplete',
    RESPONSE_MODAL: 'modal',
}

# Which first responses Discord accepts for each interaction type.
ALLOWED_RESPONSES = {
    INTERACTION_PING: {RESPONSE_PONG},
    INTERACTION_APPLICATION_COMMAND: {RESPONSE_CHANNEL_MESSAGE, RESPONSE_DEFERRED_CHANNEL_MESSAGE, RESPONSE_MODAL},
    INTERACTION_MESSAGE_COMPONENT: {
        RESPONSE_CHANNEL_MESSAGE, RESPONSE_DEFERRED_CHANNEL_MESSAGE, RESPONSE_DEFERRED_UPDATE_MESSAGE,
        RESPONSE_UPDATE_MESSAGE, RESPONSE_MODAL,
    },
    INTERACTION_AUTOCOMPLETE: {RESPONSE_AUTOCOMPLETE_RESULT},
    INTERACTION_MODAL_SUBMIT: {
        RESPONSE_CHANNEL_MESSAGE, RESPONSE_DEFERRED_CHANNEL_MESSAGE, RESPONSE_DEFERRED_UPDATE_MESSAGE,
        RESPONSE_UPDATE_MESSAGE,
    },
}


@dataclasses.dataclass
class InteractionResponse:
    """The bot's first answer to an interaction (the callback it POSTed)."""

    type: int
    data: Dict[str, Any]
    at: float
    message: Optional[FakeMessage] = None

    @property
    def kind(self) -> str:
        """'message', 'deferred_message', 'deferred_update', 'update_message', 'autocomplete' or 'modal'."""
        return RESPONSE_KINDS.get(self.type, str(self.type))

    @property
    def deferred(self) -> bool:
        return self.type in (RESPONSE_DEFERRED_CHANNEL_MESSAGE, RESPONSE_DEFERRED_UPDATE_MESSAGE)

    @property
    def ephemeral(self) -> bool:
        if self.message is not None and self.type != RESPONSE_DEFERRED_UPDATE_MESSAGE:
            return self.message.ephemeral
        return bool(int(self.data.get('flags') or 0) & MESSAGE_FLAG_EPHEMERAL)

    @property
    def content(self) -> Optional[str]:
        """The content the response carried (types 4 and 7); None for defers, autocomplete and modals."""
        return self.data.get('content')

    @property
    def embeds(self) -> List[Dict[str, Any]]:
        return list(self.data.get('embeds') or [])

    @property
    def components(self) -> List[Dict[str, Any]]:
        return list(self.data.get('components') or [])

    @property
    def choices(self) -> List[Dict[str, Any]]:
        """Autocomplete suggestions (type 8)."""
        return list(self.data.get('choices') or [])

    @property
    def modal(self) -> Optional[Dict[str, Any]]:
        """The modal's custom_id, title and components (type 9)."""
        return self.data if self.type == RESPONSE_MODAL else None


@dataclasses.dataclass(frozen=True)
class RejectedCallback:
    """A callback the fake refused, kept so a failing test can say why the interaction failed."""

    status: int
    code: int
    message: str
    at: float


class FakeInteraction:
    """An interaction created by the test acting as a user; await its outcomes with the ``wait_*`` methods."""

    def __init__(
        self,
        fake: 'FakeDiscord',
        *,
        id: int,
        token: str,
        type: int,
        member: FakeMember,
        channel: FakeChannel,
        guild: Optional[FakeGuild],
        payload: Dict[str, Any],
        message: Optional[FakeMessage] = None,
        command_name: Optional[str] = None,
    ) -> None:
        self._fake = fake
        self.id = id
        self.token = token
        self.type = type
        self.member = member
        self.channel = channel
        self.guild = guild
        self.payload = payload
        self.message = message
        self.command_name = command_name
        self.created_monotonic = fake.clock.monotonic()
        self.created_at = fake.clock.time()
        self.deadline = fake.interaction_deadline
        self.token_lifetime = fake.token_lifetime
        self.response: Optional[InteractionResponse] = None
        self.original_message_id: Optional[int] = None
        self.followup_ids: List[int] = []
        self.rejected: List[RejectedCallback] = []
        self.delivered = False

    def __repr__(self) -> str:
        return f'<FakeInteraction id={self.id} type={self.type} command={self.command_name!r} response={self.response and self.response.kind}>'

    @property
    def user(self) -> FakeMember:
        return self.member

    @property
    def data(self) -> Dict[str, Any]:
        return self.payload.get('data', {})

    @property
    def attachments(self) -> List[FakeAttachment]:
        """The files given to the command's ATTACHMENT options, as the fake keeps (and its CDN serves) them."""
        resolved = self.data.get('resolved', {}).get('attachments', {})
        return [self._fake.attachments[int(attachment_id)] for attachment_id in resolved]

    @property
    def acknowledged(self) -> bool:
        return self.response is not None

    def deadline_passed(self) -> bool:
        return self._fake.clock.monotonic() - self.created_monotonic > self.deadline

    def token_expired(self) -> bool:
        return self._fake.clock.monotonic() - self.created_monotonic > self.token_lifetime

    @property
    def original_message(self) -> Optional[FakeMessage]:
        if self.original_message_id is None:
            return None
        return self._fake.messages.get(self.original_message_id)

    @property
    def followups(self) -> List[FakeMessage]:
        return [self._fake.messages[message_id] for message_id in self.followup_ids]

    async def wait_response(self, timeout: float = 5.0) -> InteractionResponse:
        """The first response; raises ``InteractionFailed`` once the deadline passes without one."""

        def settled() -> bool:
            return self.response is not None or self.deadline_passed()

        await self._fake.wait_for(settled, timeout=timeout, description=f'a response to {self!r}')
        if self.response is None:
            reasons = '; '.join(f'{r.status} {r.code} {r.message}' for r in self.rejected) or 'no callback arrived'
            delivery = '' if self.delivered else ' (no gateway session was connected to receive it)'
            raise InteractionFailed(
                f'interaction {self.id} was not acknowledged within {self.deadline} s{delivery}: {reasons}'
            )
        return self.response

    async def wait_original(
        self, predicate: Optional[Callable[[FakeMessage], Any]] = None, timeout: float = 5.0
    ) -> FakeMessage:
        """The original response message once ``predicate`` holds (default: it is no longer "thinking")."""
        check = predicate or (lambda message: not message.loading)

        def ready() -> Optional[FakeMessage]:
            message = self.original_message
            if message is not None and check(message):
                return message
            return None

        return await self._fake.wait_for(ready, timeout=timeout, description=f'the original response of {self!r}')

    async def wait_followup(
        self, predicate: Optional[Callable[[FakeMessage], Any]] = None, timeout: float = 5.0
    ) -> FakeMessage:
        """The first followup message matching ``predicate`` (any followup by default)."""
        check = predicate or (lambda message: True)

        def found() -> Optional[FakeMessage]:
            for message in self.followups:
                if check(message):
                    return message
            return None

        return await self._fake.wait_for(found, timeout=timeout, description=f'a followup of {self!r}')

    async def wait_message(self, predicate: Callable[[FakeMessage], Any], timeout: float = 5.0) -> FakeMessage:
        """Any message of this interaction (original or followup) matching ``predicate``."""

        def found() -> Optional[FakeMessage]:
            candidates = ([self.original_message] if self.original_message else []) + self.followups
            for message in candidates:
                if predicate(message):
                    return message
            return None

        return await self._fake.wait_for(found, timeout=timeout, description=f'a message of {self!r}')
