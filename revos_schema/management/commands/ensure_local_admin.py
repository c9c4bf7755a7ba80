"""Make sure a superuser `admin` exists for local development (`make run` calls this).

The password comes from LOCAL_ADMIN_PASSWORD, or else is generated once and kept in the
git-ignored file `var/local_admin_password`, so every `make run` can show the same login.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

USERNAME = "admin"
PASSWORD_ENV = "LOCAL_ADMIN_PASSWORD"  # noqa: S105 (the name of a variable)
LOGIN_URL = "http://127.0.0.1:8000/admin/"


def default_password_file() -> Path:
    return Path(settings.BASE_DIR) / "var" / "local_admin_password"


class Command(BaseCommand):
    help = (
        f"Create the local superuser '{USERNAME}' if it does not exist (DEBUG only). Its "
        f"password is ${PASSWORD_ENV}, or one generated once and kept in var/local_admin_password."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--password-file",
            type=Path,
            default=None,
            help="where a generated password is kept (default: var/local_admin_password)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if not settings.DEBUG:
            raise CommandError(
                "ensure_local_admin is for local development only: it needs DEBUG on "
                "(`make run` sets DEBUG=1)."
            )
        password_file: Path = options["password_file"] or default_password_file()
        from_env = os.environ.get(PASSWORD_ENV, "")
        user_model = get_user_model()
        user = user_model._default_manager.filter(username=USERNAME).first()

        if user is None:
            password = from_env or _stored_or_new_password(password_file)
            user = user_model._default_manager.create_superuser(
                username=USERNAME, email="", password=password
            )
            self.stdout.write(self.style.SUCCESS(f"Created the local superuser '{USERNAME}'."))
        else:
            changed = _ensure_superuser(user)
            # The environment is authoritative: a changed LOCAL_ADMIN_PASSWORD takes effect.
            if from_env and not user.check_password(from_env):
                user.set_password(from_env)
                changed = True
            if changed:
                user.save()
                self.stdout.write(f"Updated the local superuser '{USERNAME}'.")

        stored = password_file.read_text().strip() if password_file.exists() else ""
        if from_env:
            where = f"the password in ${PASSWORD_ENV}"
        elif stored and user.check_password(stored):
            where = f"password {stored} (kept in {password_file})"
        else:
            where = f"its existing password (set {PASSWORD_ENV} to reset it)"
        self.stdout.write(f"Log in at {LOGIN_URL} as '{USERNAME}' with {where}.")


def _stored_or_new_password(password_file: Path) -> str:
    """Return the kept password, generating and keeping one (readable by us only) if none is."""
    if password_file.exists():
        stored = password_file.read_text().strip()
        if stored:
            return stored
    password = secrets.token_urlsafe(18)
    password_file.parent.mkdir(parents=True, exist_ok=True)
    password_file.touch(mode=0o600)
    password_file.write_text(password + "\n")
    return password


def _ensure_superuser(user: Any) -> bool:
    """Make `user` an active superuser; return whether anything changed."""
    changed = False
    for flag in ("is_active", "is_staff", "is_superuser"):
        if not getattr(user, flag):
            setattr(user, flag, True)
            changed = True
    return changed
