"""A pytest plugin loaded before Django settings (`-p tests.testenv` in pyproject.toml).

Tests run with production-like settings (DEBUG off), which refuse to start without a SECRET_KEY;
this gives the test run one, unless the environment already has it.
"""

import os

os.environ.setdefault("SECRET_KEY", "test-secret-key-for-the-test-suite-only")
# The test client speaks plain HTTP; production redirects it to HTTPS.
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
