"""Challenge buttons, as one restart-proof DynamicItem: `bs:vote:<entry id>` under each entry,
`bs:unvote:<entry id>` under the answer to a second vote, and `bs:enter:<job id>` ("Submit to challenge") under
finished images while the server has a challenge running. The actions differ from the job buttons'
(bot.jobs.buttons), so the two templates never match the same custom_id.

Votes: a member has at most one vote per entry. A second press of Vote is refused ("you already voted") and the
private answer carries "Take back my vote", so a vote can be changed until the deadline but never doubled."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import discord

from bot.jobs.buttons import CUSTOM_ID_PREFIX
from bot.messages import NO_MENTIONS

if TYPE_CHECKING:
    from bot.challenges.service import ChallengeService

ACTIONS = ("vote", "unvote", "enter")
_TEMPLATE = re.compile(rf"{CUSTOM_ID_PREFIX}:(?P<action>{'|'.join(ACTIONS)}):(?P<target>[0-9a-z]{{1,32}})")


def vote_label(votes: int | None) -> str:
    return "Vote" if votes is None else f"Vote ({votes})"


class ChallengeButton(discord.ui.DynamicItem[discord.ui.Button], template=_TEMPLATE):
    def __init__(self, action: str, target: str | int, *, label: str | None = None) -> None:
        if action not in ACTIONS:
            raise ValueError(f"unknown challenge button action {action!r}")
        looks = {
            "vote": (label or vote_label(None), discord.ButtonStyle.success, "👍"),
            "unvote": ("Take back my vote", discord.ButtonStyle.secondary, "↩️"),
            "enter": ("Submit to challenge", discord.ButtonStyle.success, "🏆"),
        }[action]
        super().__init__(
            discord.ui.Button(
                label=looks[0], style=looks[1], emoji=looks[2], custom_id=f"{CUSTOM_ID_PREFIX}:{action}:{target}"
            )
        )
        self.action = action
        self.target = str(target)

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Item[Any], match: re.Match[str], /
    ) -> ChallengeButton:
        return cls(match["action"], match["target"])

    async def callback(self, interaction: discord.Interaction) -> None:  # type: ignore[override]
        # The service built in BigSleepBot.setup_hook (discord.py makes this button from its custom_id alone).
        challenges: ChallengeService = interaction.client.challenges  # type: ignore[attr-defined]
        if interaction.guild_id is None:
            await interaction.response.send_message(
                "Challenges are not available here.", ephemeral=True, allowed_mentions=NO_MENTIONS
            )
            return
        if self.action == "enter":
            await challenges.enter(interaction, self.target)
        elif not self.target.isdigit():
            await interaction.response.send_message("This button is broken.", ephemeral=True, allowed_mentions=NO_MENTIONS)
        elif self.action == "vote":
            await challenges.vote(interaction, int(self.target))
        else:
            await challenges.unvote(interaction, int(self.target))


def entry_view(entry_id: int, votes: int | None) -> discord.ui.View:
    """The Vote button under an entry; `votes` is None while counts are hidden."""
    view = discord.ui.View(timeout=None)
    view.add_item(ChallengeButton("vote", entry_id, label=vote_label(votes)))
    return view


def unvote_view(entry_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(ChallengeButton("unvote", entry_id))
    return view
