def test_target_schema_is_empty(target_conn, target_schema):
    rows = target_conn.execute(
        "SELECT count(*) FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
        "ON n.oid = c.relnamespace WHERE n.nspname = %s",
        [target_schema],
    ).fetchone()
    assert rows == (0,)
