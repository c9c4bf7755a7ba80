from django.apps import AppConfig


class RevosSchemaConfig(AppConfig):
    name = "revos_schema"
    verbose_name = "RevOS schema builder"
    default_auto_field = "django.db.models.BigAutoField"
