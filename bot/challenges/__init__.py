"""Community prompt challenges: a theme and a deadline, members submit finished images, vote, winners.

`store` keeps challenges, entries and votes in the bot's database; `scheduler` fires deadlines (also those
that passed while the bot was stopped); `results` ranks entries; `contact_sheet` draws every entry on one
image. The Discord side is `bot.challenges.commands`. Nothing here imports discord except the cog and views.
"""
