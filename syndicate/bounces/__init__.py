"""Bounces stage: bounce and complaint mail in, subscriber statuses out.

Modules: `parse` (one mail's bytes -> what it reports; pure), `mailboxes`
(Maildir, mbox and .eml files -> mails; files a handled Maildir message), `apply`
(finds the subscriber and records the report through store.bounces).
"""

from syndicate.bounces.apply import BounceSummary, apply_mail
from syndicate.bounces.mailboxes import Item, read_mail, read_piped_mail

__all__ = ["BounceSummary", "Item", "apply_mail", "read_mail", "read_piped_mail"]
