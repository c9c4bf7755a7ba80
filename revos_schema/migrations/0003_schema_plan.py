# ruff: noqa: RUF012 (Django reads the Migration class attributes as is)
"""Each plan (normalized schema + generated SQL) is stored once and submissions reference it.

A noop re-sent by a retrying service would store its plan again every time. The existing rows'
plans are moved to `SchemaPlan` under the digest `SchemaPlan.digest_of` computes, nothing
dropped: a submission with a schema or SQL keeps both, through `plan`. Reversible.
"""

import django.db.models.deletion
from django.db import migrations, models

# The digest is SchemaPlan.digest_of in SQL; a row has a plan when it has a schema or SQL.
MOVE = """
INSERT INTO revos_schema_schemaplan (digest, created_at, normalized_schema, generated_sql)
SELECT DISTINCT ON (digest) digest, created_at, normalized_schema, generated_sql
FROM (
    SELECT encode(sha256(convert_to(schema_hash || E'\\n' || generated_sql, 'UTF8')), 'hex')
               AS digest,
           created_at,
           COALESCE(normalized_schema, 'null'::jsonb) AS normalized_schema,
           generated_sql
    FROM revos_schema_schemasubmission
    WHERE normalized_schema IS NOT NULL OR generated_sql <> ''
) AS planned
ORDER BY digest, created_at;
UPDATE revos_schema_schemasubmission
SET plan_id = encode(sha256(convert_to(schema_hash || E'\\n' || generated_sql, 'UTF8')), 'hex')
WHERE normalized_schema IS NOT NULL OR generated_sql <> '';
"""

MOVE_BACK = """
UPDATE revos_schema_schemasubmission AS s
SET normalized_schema = p.normalized_schema, generated_sql = p.generated_sql
FROM revos_schema_schemaplan AS p
WHERE p.digest = s.plan_id;
"""


class Migration(migrations.Migration):
    dependencies = [
        ("revos_schema", "0002_holds_permission_function"),
    ]

    operations = [
        migrations.CreateModel(
            name="SchemaPlan",
            fields=[
                (
                    "digest",
                    models.CharField(
                        editable=False,
                        help_text=(
                            "SHA-256 (hex) of the schema hash, a newline and the SQL: "
                            "see digest_of."
                        ),
                        max_length=64,
                        primary_key=True,
                        serialize=False,
                    ),
                ),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                ("normalized_schema", models.JSONField()),
                ("generated_sql", models.TextField(blank=True, default="")),
            ],
            options={
                "verbose_name": "schema plan",
            },
        ),
        migrations.AddField(
            model_name="schemasubmission",
            name="plan",
            field=models.ForeignKey(
                blank=True,
                help_text=(
                    "The normalized schema and the generated SQL (none for an unreadable request)."
                ),
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="submissions",
                to="revos_schema.schemaplan",
            ),
        ),
        migrations.RunSQL(MOVE, reverse_sql=MOVE_BACK),
        migrations.RemoveField(
            model_name="schemasubmission",
            name="generated_sql",
        ),
        migrations.RemoveField(
            model_name="schemasubmission",
            name="normalized_schema",
        ),
    ]
