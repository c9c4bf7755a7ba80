"""Reads the request path needs often enough to be written as one query each.

`holds_permission` answers what `user.has_perm(permission)` answers under Django's
`ModelBackend`, in one query instead of the two that load all of the user's permissions (the
webhook checks one permission on every request). A test compares the two for every way of
holding, or not holding, a permission.
"""

from __future__ import annotations

import functools
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connections, router
from psycopg import sql

MODEL_BACKEND = "django.contrib.auth.backends.ModelBackend"


def holds_permission(user: Any, permission: str) -> bool:
    """Return `user.has_perm(permission)`, in one query when only ModelBackend decides it."""
    if settings.AUTHENTICATION_BACKENDS != [MODEL_BACKEND] or settings.AUTH_USER_MODEL != (
        "auth.User"
    ):
        return bool(user.has_perm(permission))
    if not user.is_active:
        return False
    if user.is_superuser:
        return True
    app_label, codename = permission.split(".", 1)
    connection = connections[router.db_for_read(Permission)]
    with connection.cursor() as cursor:
        cursor.execute(_holds_permission_sql(), [user.pk, app_label, codename] * 2)
        row = cursor.fetchone()
    return bool(row and row[0])


@functools.cache
def _holds_permission_sql() -> str:
    """The query, written out once from the models' metadata (the ORM's joins, as ModelBackend's).

    Parameters: the user's id, the app label and the codename, twice (directly, then through a
    group).
    """
    user = get_user_model()
    user_permissions = user._meta.get_field("user_permissions").remote_field.through._meta
    user_groups = user._meta.get_field("groups").remote_field.through._meta
    group_permissions = Group._meta.get_field("permissions").remote_field.through._meta
    names = {
        "permission": sql.Identifier(Permission._meta.db_table),
        "content_type": sql.Identifier(ContentType._meta.db_table),
        "user_permissions": sql.Identifier(user_permissions.db_table),
        "user_groups": sql.Identifier(user_groups.db_table),
        "group_permissions": sql.Identifier(group_permissions.db_table),
    }
    return (
        sql.SQL(
            "SELECT EXISTS ("
            "SELECT 1 FROM {user_permissions} up "
            "JOIN {permission} p ON p.id = up.permission_id "
            "JOIN {content_type} ct ON ct.id = p.content_type_id "
            "WHERE up.user_id = %s AND ct.app_label = %s AND p.codename = %s"
            ") OR EXISTS ("
            "SELECT 1 FROM {user_groups} ug "
            "JOIN {group_permissions} gp ON gp.group_id = ug.group_id "
            "JOIN {permission} p ON p.id = gp.permission_id "
            "JOIN {content_type} ct ON ct.id = p.content_type_id "
            "WHERE ug.user_id = %s AND ct.app_label = %s AND p.codename = %s)"
        )
        .format(**names)
        .as_string()
    )
