"""`manage.py setup_roles`: create the operators' groups with their permissions (idempotent).

- Authors: write and submit schemas (the webhook's `submit_schema`), see the submissions.
- Approvers: approve or reject pending submissions (`approve_schema`), see everything.
- Viewers: see everything, change nothing.

Running it again brings each group's permissions back to exactly these, and says what changed.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import Group, Permission
from django.core.management.base import BaseCommand, CommandError

APP = "revos_schema"
VIEW_ALL = (
    "view_schemasubmission",
    "view_schemaplan",
    "view_schemaevent",
    "view_migrationledgerentry",
)
ROLES: dict[str, tuple[str, ...]] = {
    "Authors": ("submit_schema", *VIEW_ALL),
    "Approvers": ("approve_schema", *VIEW_ALL),
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
