"""`manage.py setup_roles`: create the operators' groups with their permissions (idempotent).

- Authors: write drafts in the admin (add, change, delete them) and submit schemas (the
  webhook's `submit_schema`, which the admin's "Submit for approval" needs too), see everything.
- Approvers: approve or reject pending submissions (`approve_schema`), re-send events and
  resume their delivery to a receiver (`resend_schemaevent`), see everything.
- Viewers: see everything, change nothing.

The admin's login needs `is_staff` as well, which is a property of the account, not of a group.

Running it again brings each group's permissions back to exactly these, and says what changed.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand, CommandError

APP = "revos_schema"
# A draft and its parts: the admin's nested forms need the permissions of each.
DRAFT_MODELS = ("schemadraft", "drafttable", "draftcolumn", "draftindex")
VIEW_ALL = (
    "view_schemasubmission",
    "view_schemaplan",
    "view_schemaevent",
    "view_eventdelivery",
    "view_eventreceiver",
    "view_migrationledgerentry",
    *(f"view_{model}" for model in DRAFT_MODELS),
)
EDIT_DRAFTS = tuple(
    f"{action}_{model}" for model in DRAFT_MODELS for action in ("add", "change", "delete")
)
ROLES: dict[str, tuple[str, ...]] = {
    "Authors": ("submit_schema", *EDIT_DRAFTS, *VIEW_ALL),
    "Approvers": ("approve_schema", "resend_schemaevent", *VIEW_ALL),
    "Viewers": VIEW_ALL,
}


class Command(BaseCommand):
    help = "Create the groups Authors, Approvers and Viewers with their permissions (idempotent)."

    def handle(self, *args: Any, **options: Any) -> None:
        for name, codenames in ROLES.items():
            wanted = set(
                Permission.objects.filter(content_type__app_label=APP, codename__in=codenames)
            )
            missing = set(codenames) - {p.codename for p in wanted}
            if missing:
                raise CommandError(
                    f"Permissions {', '.join(sorted(missing))} do not exist: run `manage.py "
                    "migrate` first."
                )
            group, created = Group.objects.get_or_create(name=name)
            held = set(group.permissions.all())
            added, removed = wanted - held, held - wanted
            group.permissions.add(*added)
            group.permissions.remove(*removed)
            if created:
                self.stdout.write(f"Created the group {name} with {_names(wanted)}.")
            elif added or removed:
                changes = [
                    f"+{_names(added)}" if added else "",
                    f"-{_names(removed)}" if removed else "",
                ]
                self.stdout.write(f"Updated the group {name}: {' '.join(c for c in changes if c)}.")
            else:
                self.stdout.write(f"The group {name} is up to date.")


def _names(permissions: set[Permission]) -> str:
    return ", ".join(sorted(f"{APP}.{p.codename}" for p in permissions))
