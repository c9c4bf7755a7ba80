# ruff: noqa: RUF012 (Django reads the Migration class attributes as is)
"""The webhook's permission check is Django's `has_perm` again: drop the database function.

Migration 0002 created `revos_schema_holds_permission`; nothing calls it any more. Reversing
this migration creates it again, as 0002 did.
"""

import importlib

from django.db import migrations

_0002 = importlib.import_module("revos_schema.migrations.0002_holds_permission_function")


class Migration(migrations.Migration):
    dependencies = [("revos_schema", "0003_schema_plan")]

    operations = [migrations.RunSQL(_0002.DROP, _0002.CREATE)]
