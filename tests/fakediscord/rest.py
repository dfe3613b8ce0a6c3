"""REST routes of the fake: HTTP parsing, recording, rate-limit injection and error bodies.

The handlers stay thin: they parse the request and call the ``FakeDiscord`` operations that hold
Discord's rules, so the same rules apply whether a message arrives by REST or by an interaction.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import logging
import math
import time
import traceback
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Optional, Tuple

from aiohttp import web

from . import errors
from .errors import DiscordAPIError

if TYPE_CHECKING:
    from .server import FakeDiscord

_log = logging.getLogger(__name__)

API_PREFIX = '/api/v10'
_CDN_CHUNK = 64 * 1024
JSON_CONTENT_TYPE = 'application/json'


@dataclasses.dataclass(frozen=True)
class IncomingFile:
    index: int
    filename: str
    data: bytes
    content_type: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One REST request as the fake saw it. ``path`` and ``route`` leave out the ``/api/v10`` prefix."""

    method: str
    path: str
    route: str  # the template, e.g. '/channels/{channel_id}/messages/{message_id}'
    status: int
    error_code: Optional[int]
    at: float  # fake-clock unix seconds
    monotonic: float  # real time.monotonic(), for measuring real gaps such as a Retry-After wait
    query: Dict[str, str]
    json: Any
    files: Tuple[Tuple[str, int], ...]


@dataclasses.dataclass
class RateLimitRule:
    """An injected 429: the next ``count`` requests whose path contains ``path_contains`` are refused."""

    path_contains: str
    retry_after: float
    count: int
    method: Optional[str] = None
    is_global: bool = False
    hits: int = 0

    def matches(self, method: str, path: str) -> bool:
        return self.count > 0 and self.path_contains in path and (self.method is None or self.method == method)


# What the middleware records about a request body (filled in by the handler that parses it).
BODY_RECORD = web.RequestKey('fake_discord_body_record', dict)


def json_response(body: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> web.Response:
    # Set the header by hand: aiohttp's helpers append "; charset=utf-8", which discord.py does not treat as JSON.
    all_headers = {'Content-Type': JSON_CONTENT_TYPE}
    all_headers.update(headers or {})
    return web.Response(body=json.dumps(body).encode(), status=status, headers=all_headers)


def no_content() -> web.Response:
    return web.Response(status=204)


async def read_body(request: web.Request) -> Tuple[Any, List[IncomingFile]]:
    """JSON body, or the ``payload_json`` part plus ``files[i]`` parts of a multipart body."""
    if request.content_type.startswith('multipart/'):
        payload: Any = {}
        files: List[IncomingFile] = []
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                break
            name = getattr(part, 'name', None)
            if name is None:
                continue
            if name == 'payload_json':
                try:
                    payload = json.loads(await part.text())
                except ValueError:
                    raise errors.invalid_json()
            elif name.startswith('files[') and name.endswith(']'):
                data = bytes(await part.read(decode=False))
                files.append(IncomingFile(int(name[6:-1]), part.filename or f'file{len(files)}', data, part.headers.get('Content-Type')))
            elif name == 'file':
                data = bytes(await part.read(decode=False))
                files.append(IncomingFile(len(files), part.filename or 'file', data, part.headers.get('Content-Type')))
        return payload, files
    raw = await request.read()
    if not raw:
        return None, []
    try:
        return json.loads(raw), []
    except ValueError:
        raise errors.invalid_json()


def _needs_bot_token(path: str) -> bool:
    return path.startswith(API_PREFIX) and not path.startswith((API_PREFIX + '/interactions/', API_PREFIX + '/webhooks/'))


def _rate_limited_response(rule: RateLimitRule) -> web.Response:
    # discord.py retries a 429 only when it looks like Discord's (a Via header and a JSON body); anything
    # else it treats as a Cloudflare ban.
    reset_after = f'{rule.retry_after:.3f}'
    headers = {
        'Retry-After': str(max(1, math.ceil(rule.retry_after))),
        'X-RateLimit-Limit': '5',
        'X-RateLimit-Remaining': '0',
        'X-RateLimit-Reset': f'{time.time() + rule.retry_after:.3f}',
        'X-RateLimit-Reset-After': reset_after,
        'X-RateLimit-Bucket': 'fake-' + format(abs(hash(rule.path_contains)) % 16**12, 'x'),
        'X-RateLimit-Scope': 'global' if rule.is_global else 'user',
        'Via': '1.1 google',
    }
    if rule.is_global:
        headers['X-RateLimit-Global'] = 'true'
    body = {'message': 'You are being rate limited.', 'retry_after': rule.retry_after, 'global': rule.is_global, 'code': 0}
    return json_response(body, status=429, headers=headers)


def build_middleware(fake: 'FakeDiscord') -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path == '/gateway':
            return await handler(request)
        path = request.path[len(API_PREFIX):] if request.path.startswith(API_PREFIX) else request.path
        route_info = request.match_info.route.resource
        route = route_info.canonical if route_info is not None else path
        if route.startswith(API_PREFIX):
            route = route[len(API_PREFIX):]
        request[BODY_RECORD] = {'json': None, 'files': ()}
        error_code: Optional[int] = None
        try:
            rule = next((rule for rule in fake.rate_limits if rule.matches(request.method, path)), None)
            if rule is not None and request.path.startswith(API_PREFIX):
                rule.count -= 1
                rule.hits += 1
                response: web.StreamResponse = _rate_limited_response(rule)
            else:
                if _needs_bot_token(request.path) and request.headers.get('Authorization') != f'Bot {fake.token}':
                    raise errors.unauthorized()
                response = await handler(request)
        except DiscordAPIError as error:
            error_code = error.code
            response = json_response(error.body(), status=error.status)
        except web.HTTPException as error:
            # The router's own 404/405: answer as Discord does (4xx with a JSON body), never 5xx.
            error_code = 0
            response = json_response({'code': 0, 'message': f'{error.status}: {error.reason}'}, status=error.status)
        except Exception:
            # A bug in the fake. Answer 4xx (a 5xx would make discord.py retry for ~25 s) and let the
            # fixture fail the test with the traceback.
            error_code = 0
            details = traceback.format_exc()
            fake.internal_errors.append(f'{request.method} {request.path}\n{details}')
            _log.error('fake discord internal error on %s %s\n%s', request.method, request.path, details)
            response = json_response({'code': 0, 'message': 'fake discord internal error (see test output)'}, status=400)
        recorded = request[BODY_RECORD]
        fake._record_request(RequestRecord(
            method=request.method,
            path=path,
            route=route,
            status=response.status,
            error_code=error_code,
            at=fake.clock.time(),
            monotonic=time.monotonic(),
            query=dict(request.query),
            json=recorded['json'],
            files=recorded['files'],
        ))
        return response

    return middleware


class RestApi:
    """aiohttp handlers. Each one parses, delegates to ``FakeDiscord``, and serialises the result."""

    def __init__(self, fake: 'FakeDiscord') -> None:
        self.fake = fake

    def add_routes(self, app: web.Application) -> None:
        p = API_PREFIX
        routes = [
            ('GET', '/users/@me', self.get_current_user),
            ('POST', '/users/@me/channels', self.create_dm),
            ('GET', '/users/{user_id}', self.get_user),
            ('GET', '/oauth2/applications/@me', self.get_application),
            ('GET', '/applications/@me', self.get_application),
            ('GET', '/gateway', self.get_gateway),
            ('GET', '/gateway/bot', self.get_gateway_bot),
            ('GET', '/applications/{application_id}/commands', self.list_commands),
            ('PUT', '/applications/{application_id}/commands', self.overwrite_commands),
            ('POST', '/applications/{application_id}/commands', self.create_command),
            ('GET', r'/applications/{application_id}/commands/{command_id:\d+}', self.get_command),
            ('PATCH', r'/applications/{application_id}/commands/{command_id:\d+}', self.edit_command),
            ('DELETE', r'/applications/{application_id}/commands/{command_id:\d+}', self.delete_command),
            ('GET', '/applications/{application_id}/guilds/{guild_id}/commands/permissions', self.list_command_permissions),
            ('GET', '/applications/{application_id}/guilds/{guild_id}/commands', self.list_commands),
            ('PUT', '/applications/{application_id}/guilds/{guild_id}/commands', self.overwrite_commands),
            ('POST', '/applications/{application_id}/guilds/{guild_id}/commands', self.create_command),
            ('GET', r'/applications/{application_id}/guilds/{guild_id}/commands/{command_id:\d+}', self.get_command),
            ('PATCH', r'/applications/{application_id}/guilds/{guild_id}/commands/{command_id:\d+}', self.edit_command),
            ('DELETE', r'/applications/{application_id}/guilds/{guild_id}/commands/{command_id:\d+}', self.delete_command),
            ('GET', '/guilds/{guild_id}', self.get_guild),
            ('GET', '/guilds/{guild_id}/channels', self.get_guild_channels),
            ('GET', '/guilds/{guild_id}/members/{user_id}', self.get_member),
            ('GET', '/channels/{channel_id}', self.get_channel),
            ('GET', '/channels/{channel_id}/messages', self.list_messages),
            ('POST', '/channels/{channel_id}/messages', self.create_message),
            ('GET', '/channels/{channel_id}/messages/{message_id}', self.get_message),
            ('PATCH', '/channels/{channel_id}/messages/{message_id}', self.edit_message),
            ('DELETE', '/channels/{channel_id}/messages/{message_id}', self.delete_message),
            ('PUT', '/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me', self.add_reaction),
            ('DELETE', '/channels/{channel_id}/messages/{message_id}/reactions/{emoji}/@me', self.remove_reaction),
            ('POST', '/channels/{channel_id}/typing', self.trigger_typing),
            ('POST', '/interactions/{interaction_id}/{token}/callback', self.interaction_callback),
            ('POST', '/webhooks/{application_id}/{token}', self.create_followup),
            ('GET', '/webhooks/{application_id}/{token}/messages/{message_id}', self.get_webhook_message),
            ('PATCH', '/webhooks/{application_id}/{token}/messages/{message_id}', self.edit_webhook_message),
            ('DELETE', '/webhooks/{application_id}/{token}/messages/{message_id}', self.delete_webhook_message),
        ]
        for method, path, handler in routes:
            app.router.add_route(method, p + path, handler)
        app.router.add_route('GET', '/attachments/{channel_id}/{attachment_id}/{filename}', self.get_attachment_bytes)

    # --- helpers -------------------------------------------------------------------------------------

    @staticmethod
    def _snowflake(request: web.Request, key: str, not_found: Callable[[], DiscordAPIError]) -> int:
        try:
            return int(request.match_info[key])
        except ValueError:
            raise not_found()

    async def _body(self, request: web.Request) -> Tuple[Any, List[IncomingFile]]:
        payload, files = await read_body(request)
        request[BODY_RECORD]['json'] = payload
        request[BODY_RECORD]['files'] = tuple((file.filename, len(file.data)) for file in files)
        return payload, files

    def _check_application(self, request: web.Request) -> None:
        if request.match_info['application_id'] != str(self.fake.application_id):
            raise errors.not_application_owner()

    def _command_scope(self, request: web.Request) -> Optional[int]:
        self._check_application(request)
        if 'guild_id' not in request.match_info:
            return None
        guild_id = self._snowflake(request, 'guild_id', errors.unknown_guild)
        self.fake._require_bot_guild(guild_id)
        return guild_id

    # --- login, users, gateway -----------------------------------------------------------------------

    async def get_current_user(self, request: web.Request) -> web.Response:
        user = self.fake.bot_user.to_payload()
        user.update(verified=True, mfa_enabled=False, flags=0, locale='en-US', email=None)
        return json_response(user)

    async def get_user(self, request: web.Request) -> web.Response:
        user = self.fake.users.get(self._snowflake(request, 'user_id', errors.unknown_user))
        if user is None:
            raise errors.unknown_user()
        return json_response(user.to_payload())

    async def create_dm(self, request: web.Request) -> web.Response:
        payload, _ = await self._body(request)
        recipient_id = int((payload or {}).get('recipient_id', 0))
        channel = self.fake._dm_channel_for(recipient_id)
        return json_response(channel.to_payload())

    async def get_application(self, request: web.Request) -> web.Response:
        return json_response(self.fake._application_payload())

    async def get_gateway(self, request: web.Request) -> web.Response:
        return json_response({'url': self.fake.gateway_url})

    async def get_gateway_bot(self, request: web.Request) -> web.Response:
        return json_response({
            'url': self.fake.gateway_url,
            'shards': self.fake.recommended_shards,
            'session_start_limit': self.fake.gateway.session_start_limit(),
        })

    # --- application commands ------------------------------------------------------------------------

    async def list_commands(self, request: web.Request) -> web.Response:
        guild_id = self._command_scope(request)
        return json_response(self.fake.commands(guild_id))

    async def overwrite_commands(self, request: web.Request) -> web.Response:
        guild_id = self._command_scope(request)
        payload, _ = await self._body(request)
        if not isinstance(payload, list):
            raise errors.form_error((), 'BASE_TYPE_ARRAY', 'Must be an array.')
        return json_response(self.fake._overwrite_commands(guild_id, payload))

    async def create_command(self, request: web.Request) -> web.Response:
        guild_id = self._command_scope(request)
        payload, _ = await self._body(request)
        command, created = self.fake._upsert_command(guild_id, payload or {})
        return json_response(command, status=201 if created else 200)

    async def get_command(self, request: web.Request) -> web.Response:
        guild_id = self._command_scope(request)
        return json_response(self.fake._get_command(guild_id, int(request.match_info['command_id'])))

    async def edit_command(self, request: web.Request) -> web.Response:
        guild_id = self._command_scope(request)
        payload, _ = await self._body(request)
        return json_response(self.fake._edit_command(guild_id, int(request.match_info['command_id']), payload or {}))

    async def delete_command(self, request: web.Request) -> web.Response:
        guild_id = self._command_scope(request)
        self.fake._delete_command(guild_id, int(request.match_info['command_id']))
        return no_content()

    async def list_command_permissions(self, request: web.Request) -> web.Response:
        self._command_scope(request)
        return json_response([])

    # --- guilds and channels -------------------------------------------------------------------------

    async def get_guild(self, request: web.Request) -> web.Response:
        guild = self.fake._require_bot_guild(self._snowflake(request, 'guild_id', errors.unknown_guild))
        return json_response(self.fake._guild_rest_payload(guild))

    async def get_guild_channels(self, request: web.Request) -> web.Response:
        guild = self.fake._require_bot_guild(self._snowflake(request, 'guild_id', errors.unknown_guild))
        return json_response([channel.to_payload() for channel in guild.channels.values() if not channel.deleted])

    async def get_member(self, request: web.Request) -> web.Response:
        guild = self.fake._require_bot_guild(self._snowflake(request, 'guild_id', errors.unknown_guild))
        member = guild.members.get(self._snowflake(request, 'user_id', errors.unknown_user))
        if member is None:
            raise DiscordAPIError(404, 10007, 'Unknown Member')
        return json_response(member.to_payload())

    async def get_channel(self, request: web.Request) -> web.Response:
        channel = self.fake._require_channel(self._snowflake(request, 'channel_id', errors.unknown_channel))
        return json_response(channel.to_payload())

    async def trigger_typing(self, request: web.Request) -> web.Response:
        channel = self.fake._require_channel(self._snowflake(request, 'channel_id', errors.unknown_channel))
        self.fake._require_bot_can_send(channel, with_files=False)
        return no_content()

    # --- channel messages ----------------------------------------------------------------------------

    async def list_messages(self, request: web.Request) -> web.Response:
        channel_id = self._snowflake(request, 'channel_id', errors.unknown_channel)
        try:
            limit = max(1, min(100, int(request.query.get('limit', 50))))
            before = int(request.query['before']) if 'before' in request.query else None
            after = int(request.query['after']) if 'after' in request.query else None
        except ValueError:
            raise errors.form_error(('limit',), 'NUMBER_TYPE_COERCE', 'Value is not int.')
        messages = self.fake._list_channel_messages(channel_id, limit=limit, before=before, after=after)
        return json_response([self.fake._message_payload(message) for message in messages])

    async def create_message(self, request: web.Request) -> web.Response:
        channel_id = self._snowflake(request, 'channel_id', errors.unknown_channel)
        payload, files = await self._body(request)
        message = self.fake._bot_send(channel_id, payload or {}, files, source='POST /channels/{channel_id}/messages')
        return json_response(self.fake._message_payload(message))

    async def get_message(self, request: web.Request) -> web.Response:
        message = self.fake._bot_fetch(
            self._snowflake(request, 'channel_id', errors.unknown_channel),
            self._snowflake(request, 'message_id', errors.unknown_message),
        )
        return json_response(self.fake._message_payload(message))

    async def edit_message(self, request: web.Request) -> web.Response:
        channel_id = self._snowflake(request, 'channel_id', errors.unknown_channel)
        message_id = self._snowflake(request, 'message_id', errors.unknown_message)
        payload, files = await self._body(request)
        message = self.fake._bot_edit(channel_id, message_id, payload or {}, files, source='PATCH /channels/{channel_id}/messages/{message_id}')
        return json_response(self.fake._message_payload(message))

    async def delete_message(self, request: web.Request) -> web.Response:
        self.fake._bot_delete(
            self._snowflake(request, 'channel_id', errors.unknown_channel),
            self._snowflake(request, 'message_id', errors.unknown_message),
        )
        return no_content()

    async def add_reaction(self, request: web.Request) -> web.Response:
        message = self.fake._bot_fetch(
            self._snowflake(request, 'channel_id', errors.unknown_channel),
            self._snowflake(request, 'message_id', errors.unknown_message),
        )
        self.fake._react(message, request.match_info['emoji'], add=True)
        return no_content()

    async def remove_reaction(self, request: web.Request) -> web.Response:
        message = self.fake._bot_fetch(
            self._snowflake(request, 'channel_id', errors.unknown_channel),
            self._snowflake(request, 'message_id', errors.unknown_message),
        )
        self.fake._react(message, request.match_info['emoji'], add=False)
        return no_content()

    # --- interactions and their webhooks -------------------------------------------------------------

    async def interaction_callback(self, request: web.Request) -> web.Response:
        interaction_id = self._snowflake(request, 'interaction_id', errors.unknown_interaction)
        payload, files = await self._body(request)
        body = self.fake._interaction_callback(interaction_id, request.match_info['token'], payload or {}, files)
        if request.query.get('with_response', '').lower() in ('1', 'true'):
            return json_response(body)
        return no_content()

    async def create_followup(self, request: web.Request) -> web.Response:
        self._check_webhook_application(request)
        payload, files = await self._body(request)
        message = self.fake._create_followup(request.match_info['token'], payload or {}, files)
        if request.query.get('wait', '').lower() in ('1', 'true'):
            return json_response(self.fake._message_payload(message))
        return no_content()

    async def get_webhook_message(self, request: web.Request) -> web.Response:
        self._check_webhook_application(request)
        message = self.fake._webhook_message(request.match_info['token'], request.match_info['message_id'])
        return json_response(self.fake._message_payload(message))

    async def edit_webhook_message(self, request: web.Request) -> web.Response:
        self._check_webhook_application(request)
        payload, files = await self._body(request)
        message = self.fake._edit_webhook_message(request.match_info['token'], request.match_info['message_id'], payload or {}, files)
        return json_response(self.fake._message_payload(message))

    async def delete_webhook_message(self, request: web.Request) -> web.Response:
        self._check_webhook_application(request)
        self.fake._delete_webhook_message(request.match_info['token'], request.match_info['message_id'])
        return no_content()

    def _check_webhook_application(self, request: web.Request) -> None:
        if request.match_info['application_id'] != str(self.fake.application_id):
            raise errors.unknown_webhook()

    # --- attachment CDN ------------------------------------------------------------------------------

    async def get_attachment_bytes(self, request: web.Request) -> web.StreamResponse:
        """The CDN: an attachment's bytes, served as its ``cdn`` (models.CdnBehaviour) says."""
        attachment = self.fake._attachment_for_url(
            request.match_info['attachment_id'], request.match_info['filename'], request.query.get('ex')
        )
        if attachment is None:
            return web.Response(status=404, text='This content is no longer available.')
        self.fake.cdn_fetches.append(attachment.id)
        cdn = attachment.cdn
        if cdn.status is not None:
            return web.Response(status=cdn.status, text='This content is no longer available.')
        headers = {'Content-Type': attachment.content_type or 'application/octet-stream'}
        body = attachment.data if cdn.body is None else cdn.body
        if cdn.gzip:
            body = gzip.compress(body)
            headers['Content-Encoding'] = 'gzip'
        if not cdn.chunked and cdn.content_length is None:
            return web.Response(body=body, headers=headers)
        response = web.StreamResponse(headers=headers)
        if cdn.chunked:
            response.enable_chunked_encoding()
        else:
            response.content_length = cdn.content_length
            response.force_close()  # a body shorter than announced ends with the connection
        await response.prepare(request)
        try:
            for start in range(0, len(body), _CDN_CHUNK):
                await response.write(body[start:start + _CDN_CHUNK])
            await response.write_eof()
        except ConnectionError:
            pass  # the client stopped reading (a bot refusing a body that grew too big)
        return response
