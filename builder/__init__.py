"""The WF106 schema builder: declarative tables in, safe multi-tenant PostgreSQL DDL out.

Plain Python (no Django). Entry point: `builder.pipeline.run_schema_builder`.
"""
