"""Schemathesis hooks for berth's API contract run (tests/tests/api_contract.rs).

- Bundles (application/zstd) and image archives (application/x-tar) are bytes: generate
  them as Schemathesis generates application/octet-stream.
- `refused_without_credentials`: a request that carries no credentials to an operation that
  declares a security requirement must be answered 401 — never served, never a 403 or a
  4xx about its input first.
"""

import schemathesis

schemathesis.serializer.alias("application/zstd", "application/octet-stream")
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")


@schemathesis.check
def refused_without_credentials(ctx, response, case):
    if case.headers and any(k.lower() == "authorization" for k in case.headers):
        return None
    # A method the operation does not have (the coverage phase sends TRACE and the like)
    # is answered 405, with or without credentials.
    if case.method.upper() != case.operation.method.upper():
        return None
    security = case.operation.definition.raw.get("security")
    if not security:
        return None
    if response.status_code != 401:
        raise AssertionError(
            f"{case.operation.label} answered {response.status_code} to a request without "
            "credentials; a protected operation must answer 401"
        )
    return None
