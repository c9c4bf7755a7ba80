# ruff: noqa: RUF012 (Django reads the Migration class attributes as is)
"""The webhook's permission check as a PL/pgSQL function (see revos_schema.api.CanSubmitSchema).

A PL/pgSQL function keeps the plan of its query for the life of the database session, and the
app's connections are persistent: the check does not plan a two-EXISTS join on every request
(Django does not use prepared statements). Migration 0004 drops it again. The rule is
ModelBackend's for Django's own User, Group and Permission tables: the permission is held
directly or through one of the user's groups. Superusers and inactive accounts are decided in
Python before it is called.
"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION revos_schema_holds_permission(
    p_user_id bigint, p_app_label text, p_codename text
) RETURNS boolean
LANGUAGE plpgsql STABLE
AS $function$
BEGIN
    RETURN EXISTS (
        SELECT 1 FROM auth_user_user_permissions up
        JOIN auth_permission p ON p.id = up.permission_id
        JOIN django_content_type ct ON ct.id = p.content_type_id
        WHERE up.user_id = p_user_id AND p.codename = p_codename AND ct.app_label = p_app_label
    ) OR EXISTS (
        SELECT 1 FROM auth_user_groups ug
        JOIN auth_group_permissions gp ON gp.group_id = ug.group_id
        JOIN auth_permission p ON p.id = gp.permission_id
        JOIN django_content_type ct ON ct.id = p.content_type_id
        WHERE ug.user_id = p_user_id AND p.codename = p_codename AND ct.app_label = p_app_label
    );
END
$function$
"""

DROP = "DROP FUNCTION IF EXISTS revos_schema_holds_permission(bigint, text, text)"


class Migration(migrations.Migration):
    dependencies = [
        ("revos_schema", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunSQL(CREATE, DROP)]
