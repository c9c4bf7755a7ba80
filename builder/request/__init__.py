"""The request: reading the body as JSON, the orchestration envelope, and typed field readers.

`body.parse_request_json` turns bytes into a value that can be hashed, stored and validated;
`envelope.parse_envelope` reads `{meta, subject, payload, context}` and fills the defaults;
`fields` holds the small readers (`read_string`, `check_keys`, ...) that collect every issue
with its path instead of stopping at the first.
"""
