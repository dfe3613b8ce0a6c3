"""Discord's limits on what a bot may send, raised as the same errors real Discord answers with.

Every function raises ``DiscordAPIError`` (usually a 50035 "Invalid Form Body" with a nested ``errors``
object, as Discord does) so a bot that would be refused by Discord is refused by the fake too.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from . import errors
from .models import MESSAGE_FLAG_COMPONENTS_V2, walk_components

MAX_CONTENT_LENGTH = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL_CHARACTERS = 6000
MAX_FILES_PER_MESSAGE = 10
MAX_ACTION_ROWS = 5
MAX_COMPONENTS_PER_ROW = 5
MAX_COMPONENTS_V2_TOTAL = 40
MAX_CUSTOM_ID_LENGTH = 100
MAX_BUTTON_LABEL_LENGTH = 80
MAX_AUTOCOMPLETE_CHOICES = 25
MAX_COMMAND_OPTIONS = 25
MAX_COMMANDS_PER_SCOPE = 100

COMPONENT_ACTION_ROW = 1
COMPONENT_BUTTON = 2
SELECT_COMPONENT_TYPES = {3, 5, 6, 7, 8}
COMPONENT_TEXT_INPUT = 4
COMPONENT_LABEL = 18
BUTTON_STYLE_LINK = 5
BUTTON_STYLE_PREMIUM = 6

Path = Tuple[Any, ...]


def _too_long(path: Path, limit: int) -> errors.DiscordAPIError:
    return errors.form_error(path, 'BASE_TYPE_MAX_LENGTH', f'Must be {limit} or fewer in length.')


def _bad_length(path: Path, low: int, high: int) -> errors.DiscordAPIError:
    return errors.form_error(path, 'BASE_TYPE_BAD_LENGTH', f'Must be between {low} and {high} in length.')


def check_content(content: Any, path: Path) -> None:
    if content is None:
        return
    if not isinstance(content, str):
        raise errors.form_error(path, 'STRING_TYPE_CONVERT', 'Could not interpret value as string.')
    if len(content) > MAX_CONTENT_LENGTH:
        raise _too_long(path, MAX_CONTENT_LENGTH)


def check_embeds(embeds: Any, path: Path) -> None:
    if embeds is None:
        return
    if len(embeds) > MAX_EMBEDS:
        raise _too_long(path, MAX_EMBEDS)
    total = 0
    for index, embed in enumerate(embeds):
        limits = {'title': 256, 'description': 4096}
        for key, limit in limits.items():
            value = embed.get(key) or ''
            if len(value) > limit:
                raise _too_long(path + (index, key), limit)
            total += len(value)
        fields = embed.get('fields') or []
        if len(fields) > 25:
            raise _too_long(path + (index, 'fields'), 25)
        for field in fields:
            total += len(field.get('name') or '') + len(field.get('value') or '')
        total += len((embed.get('footer') or {}).get('text') or '')
        total += len((embed.get('author') or {}).get('name') or '')
    if total > MAX_EMBED_TOTAL_CHARACTERS:
        raise errors.form_error(path, 'MAX_EMBED_SIZE_EXCEEDED', 'Embed size exceeds maximum size of 6000')


def _check_custom_id(component: Mapping[str, Any], path: Path, seen: Set[str]) -> None:
    custom_id = component.get('custom_id')
    if custom_id is None:
        return
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID_LENGTH:
        raise _bad_length(path + ('custom_id',), 1, MAX_CUSTOM_ID_LENGTH)
    if custom_id in seen:
        raise errors.form_error(path + ('custom_id',), 'COMPONENT_CUSTOM_ID_DUPLICATED', 'Component custom id cannot be duplicated')
    seen.add(custom_id)


def _check_button(button: Mapping[str, Any], path: Path) -> None:
    style = button.get('style')
    if style == BUTTON_STYLE_LINK:
        if not button.get('url') or 'custom_id' in button:
            raise errors.form_error(path, 'BUTTON_COMPONENT_INVALID_URL', 'A link button needs a url and no custom_id.')
    elif style != BUTTON_STYLE_PREMIUM and not button.get('custom_id'):
        raise errors.form_error(path + ('custom_id',), 'BASE_TYPE_REQUIRED', 'This field is required')
    label = button.get('label')
    if label is not None and len(label) > MAX_BUTTON_LABEL_LENGTH:
        raise _too_long(path + ('label',), MAX_BUTTON_LABEL_LENGTH)


def check_components(components: Any, flags: int, path: Path) -> None:
    if not components:
        return
    seen: Set[str] = set()
    if flags & MESSAGE_FLAG_COMPONENTS_V2:
        # Layout rules for components v2 are many; the limits bots most often hit are checked here.
        everything = list(walk_components(components))
        if len(everything) > MAX_COMPONENTS_V2_TOTAL:
            raise _too_long(path, MAX_COMPONENTS_V2_TOTAL)
        for index, component in enumerate(everything):
            _check_custom_id(component, path + (index,), seen)
            if component.get('type') == COMPONENT_BUTTON:
                _check_button(component, path + (index,))
        return
    if len(components) > MAX_ACTION_ROWS:
        raise _too_long(path, MAX_ACTION_ROWS)
    for row_index, row in enumerate(components):
        row_path = path + (row_index,)
        if row.get('type') != COMPONENT_ACTION_ROW:
            raise errors.form_error(row_path + ('type',), 'UNION_TYPE_CHOICES', 'Top-level components must be action rows unless the IS_COMPONENTS_V2 flag is set.')
        children = row.get('components') or []
        if not children:
            raise errors.form_error(row_path + ('components',), 'BASE_TYPE_BAD_LENGTH', 'Must be between 1 and 5 in length.')
        if len(children) > MAX_COMPONENTS_PER_ROW:
            raise _too_long(row_path + ('components',), MAX_COMPONENTS_PER_ROW)
        has_select = any(child.get('type') in SELECT_COMPONENT_TYPES for child in children)
        if has_select and len(children) > 1:
            raise errors.form_error(row_path + ('components',), 'COMPONENT_LAYOUT_WIDTH_EXCEEDED', 'The specified component exceeds the maximum width')
        for child_index, child in enumerate(children):
            child_path = row_path + ('components', child_index)
            _check_custom_id(child, child_path, seen)
            if child.get('type') == COMPONENT_BUTTON:
                _check_button(child, child_path)


def check_uploads(upload_sizes: Sequence[int], attachment_size_limit: int) -> None:
    if len(upload_sizes) > MAX_FILES_PER_MESSAGE:
        raise _too_long(('files',), MAX_FILES_PER_MESSAGE)
    if any(size > attachment_size_limit for size in upload_sizes):
        raise errors.entity_too_large()


def check_message(
    payload: Mapping[str, Any],
    upload_sizes: Sequence[int],
    *,
    attachment_size_limit: int,
    creating: bool,
    path: Path = (),
) -> None:
    """All per-message limits; ``creating`` adds the empty-message rule (edits may blank a field)."""
    check_uploads(upload_sizes, attachment_size_limit)
    check_content(payload.get('content'), path + ('content',))
    check_embeds(payload.get('embeds'), path + ('embeds',))
    flags = int(payload.get('flags') or 0)
    check_components(payload.get('components'), flags, path + ('components',))
    check_allowed_mentions(payload.get('allowed_mentions'), path + ('allowed_mentions',))
    if flags & MESSAGE_FLAG_COMPONENTS_V2 and (payload.get('content') or payload.get('embeds')):
        raise errors.form_error(path + ('content',), 'MESSAGE_CANNOT_USE_LEGACY_FIELDS_WITH_COMPONENTS_V2',
                                'The content and embeds fields cannot be used when using components v2')
    if creating:
        has_something = any((
            payload.get('content'),
            payload.get('embeds'),
            payload.get('components'),
            payload.get('sticker_ids'),
            payload.get('poll'),
            upload_sizes,
            payload.get('attachments'),
        ))
        if not has_something:
            raise errors.empty_message()


def check_allowed_mentions(allowed_mentions: Any, path: Path) -> None:
    if allowed_mentions is None:
        return
    parse = allowed_mentions.get('parse') or []
    for kind in ('users', 'roles'):
        if kind in parse and allowed_mentions.get(kind):
            raise errors.form_error(path + ('parse',), 'SET_TYPE_ALREADY_CONTAINS_VALUE',
                                    f'parse:["{kind}"] and {kind}: [ids] are mutually exclusive.')


USER_MENTION = re.compile(r'<@!?(\d+)>')
ROLE_MENTION = re.compile(r'<@&(\d+)>')


def resolve_mentions(
    content: str,
    allowed_mentions: Optional[Mapping[str, Any]],
    *,
    can_mention_everyone: bool,
) -> Tuple[List[int], List[int], bool]:
    """Which users, roles and @everyone a message pings, as Discord decides from ``allowed_mentions``."""
    user_ids = [int(found) for found in USER_MENTION.findall(content or '')]
    role_ids = [int(found) for found in ROLE_MENTION.findall(content or '')]
    says_everyone = '@everyone' in (content or '') or '@here' in (content or '')
    if allowed_mentions is None:
        parse: Set[str] = {'users', 'roles', 'everyone'}
        allowed_users: Set[int] = set()
        allowed_roles: Set[int] = set()
    else:
        parse = set(allowed_mentions.get('parse') or [])
        allowed_users = {int(user_id) for user_id in allowed_mentions.get('users') or []}
        allowed_roles = {int(role_id) for role_id in allowed_mentions.get('roles') or []}
    pinged_users = [user_id for user_id in dict.fromkeys(user_ids) if 'users' in parse or user_id in allowed_users]
    pinged_roles = [role_id for role_id in dict.fromkeys(role_ids) if 'roles' in parse or role_id in allowed_roles]
    pinged_everyone = says_everyone and 'everyone' in parse and can_mention_everyone
    return pinged_users, pinged_roles, pinged_everyone


def check_autocomplete_choices(data: Mapping[str, Any]) -> None:
    choices = data.get('choices')
    if choices is None:
        raise errors.form_error(('data', 'choices'), 'BASE_TYPE_REQUIRED', 'This field is required')
    if len(choices) > MAX_AUTOCOMPLETE_CHOICES:
        raise _too_long(('data', 'choices'), MAX_AUTOCOMPLETE_CHOICES)
    for index, choice in enumerate(choices):
        name = choice.get('name') or ''
        if not 1 <= len(name) <= 100:
            raise _bad_length(('data', 'choices', index, 'name'), 1, 100)
        value = choice.get('value')
        if isinstance(value, str) and len(value) > 100:
            raise _too_long(('data', 'choices', index, 'value'), 100)


def check_modal(data: Mapping[str, Any]) -> None:
    custom_id = data.get('custom_id')
    if not isinstance(custom_id, str) or not 1 <= len(custom_id) <= MAX_CUSTOM_ID_LENGTH:
        raise _bad_length(('data', 'custom_id'), 1, MAX_CUSTOM_ID_LENGTH)
    title = data.get('title') or ''
    if not 1 <= len(title) <= 45:
        raise _bad_length(('data', 'title'), 1, 45)
    components = data.get('components') or []
    if not 1 <= len(components) <= 5:
        raise _bad_length(('data', 'components'), 1, 5)
    seen: Set[str] = set()
    for index, component in enumerate(walk_components(components)):
        _check_custom_id(component, ('data', 'components', index), seen)


COMMAND_NAME = re.compile(r'[-_\w]{1,32}')
OPTION_SUB_COMMAND = 1
OPTION_SUB_COMMAND_GROUP = 2


def _check_name(name: Any, path: Path, *, chat_input: bool) -> None:
    if not isinstance(name, str) or not 1 <= len(name) <= 32:
        raise _bad_length(path, 1, 32)
    if chat_input and (not COMMAND_NAME.fullmatch(name) or name != name.lower()):
        raise errors.form_error(path, 'APPLICATION_COMMAND_INVALID_NAME', 'Command name is invalid')


def _check_description(description: Any, path: Path) -> None:
    if not isinstance(description, str) or not 1 <= len(description) <= 100:
        raise _bad_length(path, 1, 100)


def _check_options(options: Sequence[Mapping[str, Any]], path: Path, depth: int) -> None:
    if len(options) > MAX_COMMAND_OPTIONS:
        raise _too_long(path, MAX_COMMAND_OPTIONS)
    names: Set[str] = set()
    seen_optional = False
    for index, option in enumerate(options):
        option_path = path + (index,)
        _check_name(option.get('name'), option_path + ('name',), chat_input=True)
        _check_description(option.get('description'), option_path + ('description',))
        if option['name'] in names:
            raise errors.form_error(option_path + ('name',), 'APPLICATION_COMMAND_OPTION_NAME_ALREADY_EXISTS', 'Option name already exists')
        names.add(option['name'])
        option_type = option.get('type')
        if option_type in (OPTION_SUB_COMMAND, OPTION_SUB_COMMAND_GROUP):
            if depth >= 2 or (option_type == OPTION_SUB_COMMAND_GROUP and depth >= 1):
                raise errors.form_error(option_path + ('type',), 'APPLICATION_COMMAND_OPTIONS_TYPE_INVALID', 'Subcommands nest at most two levels deep')
            children = option.get('options') or []
            if option_type == OPTION_SUB_COMMAND_GROUP and any(child.get('type') != OPTION_SUB_COMMAND for child in children):
                raise errors.form_error(option_path + ('options',), 'APPLICATION_COMMAND_OPTIONS_TYPE_INVALID', 'A group holds only subcommands')
            _check_options(children, option_path + ('options',), depth + 1)
            continue
        if option.get('required'):
            if seen_optional:
                raise errors.form_error(option_path + ('required',), 'APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID', 'Required options must be placed before non-required options')
        else:
            seen_optional = True
        choices = option.get('choices') or []
        if len(choices) > MAX_AUTOCOMPLETE_CHOICES:
            raise _too_long(option_path + ('choices',), MAX_AUTOCOMPLETE_CHOICES)
        if choices and option.get('autocomplete'):
            raise errors.form_error(option_path + ('autocomplete',), 'APPLICATION_COMMAND_OPTION_AUTOCOMPLETE_INVALID', 'Autocomplete cannot be set with choices')


def check_command(command: Mapping[str, Any], path: Path = ()) -> None:
    command_type = command.get('type', 1)
    chat_input = command_type == 1
    _check_name(command.get('name'), path + ('name',), chat_input=chat_input)
    if chat_input:
        _check_description(command.get('description'), path + ('description',))
    _check_options(command.get('options') or [], path + ('options',), 0)


def check_command_set(commands: Iterable[Mapping[str, Any]]) -> None:
    per_type: Dict[int, Set[str]] = {}
    for index, command in enumerate(commands):
        check_command(command, (index,))
        names = per_type.setdefault(command.get('type', 1), set())
        if command['name'] in names:
            raise errors.form_error((index, 'name'), 'APPLICATION_COMMANDS_DUPLICATE_NAME', f'Application command names must be unique: {command["name"]}')
        names.add(command['name'])
    if len(per_type.get(1, ())) > MAX_COMMANDS_PER_SCOPE:
        raise _too_long((), MAX_COMMANDS_PER_SCOPE)
