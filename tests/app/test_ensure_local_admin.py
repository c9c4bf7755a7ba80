"""`manage.py ensure_local_admin`: the superuser that `make run` logs in with."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command


@pytest.fixture
def local(settings, monkeypatch):
    """Run as `make run` does: DEBUG on, no LOCAL_ADMIN_PASSWORD unless a test sets one."""
    settings.DEBUG = True
    monkeypatch.delenv("LOCAL_ADMIN_PASSWORD", raising=False)


def run(password_file: Path) -> str:
    out = io.StringIO()
    call_command("ensure_local_admin", password_file=password_file, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_creates_a_superuser_with_a_generated_password_kept_in_a_file(local, tmp_path):
    password_file = tmp_path / "var" / "local_admin_password"

    out = run(password_file)

    password = password_file.read_text().strip()
    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff and admin.is_active
    assert admin.check_password(password)
    assert len(password) >= 20
    assert password_file.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert "Created" in out
    assert "http://127.0.0.1:8000/admin/" in out and password in out


@pytest.mark.django_db
def test_is_idempotent(local, tmp_path):
    password_file = tmp_path / "local_admin_password"
    run(password_file)
    before = User.objects.get(username="admin")

    out = run(password_file)

    after = User.objects.get(username="admin")
    assert User.objects.filter(username="admin").count() == 1
    assert after.password == before.password
    assert "Created" not in out and "Updated" not in out
    assert password_file.read_text().strip() in out


@pytest.mark.django_db
def test_reuses_a_kept_password_for_a_new_database(local, tmp_path):
    password_file = tmp_path / "local_admin_password"
    password_file.write_text("kept-from-an-earlier-database\n")

    run(password_file)

    assert User.objects.get(username="admin").check_password("kept-from-an-earlier-database")


@pytest.mark.django_db
def test_takes_the_password_from_the_environment(local, tmp_path, monkeypatch):
    password_file = tmp_path / "local_admin_password"
    monkeypatch.setenv("LOCAL_ADMIN_PASSWORD", "from-the-env")
    run(password_file)
    assert User.objects.get(username="admin").check_password("from-the-env")
    assert not password_file.exists()

    monkeypatch.setenv("LOCAL_ADMIN_PASSWORD", "changed-in-the-env")
    out = run(password_file)

    assert User.objects.get(username="admin").check_password("changed-in-the-env")
    assert "changed-in-the-env" not in out


@pytest.mark.django_db
def test_restores_superuser_rights_of_an_existing_admin(local, tmp_path):
    User.objects.create_user("admin", password="x", is_staff=False)

    run(tmp_path / "local_admin_password")

    admin = User.objects.get(username="admin")
    assert admin.is_superuser and admin.is_staff
    assert admin.check_password("x")


@pytest.mark.django_db
def test_refuses_to_run_with_debug_off(settings, tmp_path):
    settings.DEBUG = False

    with pytest.raises(CommandError, match="DEBUG"):
        run(tmp_path / "local_admin_password")

    assert not User.objects.filter(username="admin").exists()
